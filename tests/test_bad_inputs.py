"""Bad inputs of issue 16 (deliverables 2 and 3) end to end through `fluentdream ...`: one line on
stderr, exit status 2, no traceback, and every watched directory left exactly as it was. And the
reverse: an internal failure keeps its traceback and says it is a bug."""
from __future__ import annotations

import errno
import json
import shlex
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fluentdream as fd
from fluentdream import runs
from fluentdream.core import history
from fluentdream import files as file_writes
from fluentdream.cli import main

SMALL = ["--iters", "2", "--population-size", "2", "--explore-per-pop", "4", "--topk", "16",
         "--seq-len", "6", "--restart-frequency", "2", "--wandb", "disabled", "--no-progress"]


def snapshot(root):
    """Every path under root, with (size, mtime) for files: 'left as it was' compares two of
    these (a directory's own mtime moves when the writability probe comes and goes)."""
    return {str(p.relative_to(root)): p.is_dir() or (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def fails_cleanly(argv, capsys, watched, *messages):
    """main(argv) exits 2 with one line holding every one of `messages`, and `watched` is
    unchanged."""
    before = snapshot(watched)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fluentdream ") and all(m in lines[0] for m in messages), lines[0]
    assert snapshot(watched) == before
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A complete 2-iteration run directory (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(dream_args(tiny_model_dir, run_dir)) == 0
    return run_dir


def dream_args(model_dir, run_dir, *extra, target="L1.N5"):
    return ["dream", "--model", str(model_dir), "--target", target, "--run-dir", str(run_dir),
            *SMALL, *extra]


@pytest.fixture
def files(tmp_path):
    """Malformed input files: a text file posing as .npy, zero and NaN vectors, SAE directories
    with a missing tensor and with malformed JSON."""
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "text.npy").write_text("0.1 0.2 0.3\n")
    np.save(d / "zeros.npy", np.zeros(64, np.float32))
    np.save(d / "nan.npy", np.full(64, np.nan, np.float32))
    cfg = dict(hook_name="blocks.1.hook_resid_pre", d_in=64, d_sae=8)
    for name, tensors, text in [
            ("sae_no_bdec", ("W_enc", "b_enc"), json.dumps(cfg)),
            ("sae_bad_json", ("W_enc", "b_enc", "b_dec"), '{"hook_name": "blocks.1.')]:
        (d / name).mkdir()
        (d / name / "cfg.json").write_text(text)
        shapes = dict(W_enc=(64, 8), b_enc=(8,), b_dec=(64,))
        save_file({k: torch.zeros(shapes[k]) for k in tensors},
                  str(d / name / "sae_weights.safetensors"))
    return d


def test_settings_against_the_model_fail_at_once(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    run_dir = out / "run"
    cases = [
        (["--seq-len", "200"], "seq_len 200 exceeds the 128 positions"),
        (["--seq-len", "100000"], "seq_len 100000 exceeds the 128 positions"),
        (["--checkpoint-every", "0"], "checkpoint_every must be a positive integer, got 0"),
        (["--device", "gpu"], "unknown device 'gpu'; allowed: cpu, cuda, cuda:N, mps"),
        (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"],
         "does not exist" if torch.cuda.is_available() else "CUDA is not available"),
    ]
    for flags, message in cases:
        fails_cleanly(dream_args(tiny_model_dir, run_dir, *flags), capsys, out, message)
    # 127 tokens fit the positions, but random prompts that long rarely survive retokenization
    line = fails_cleanly(dream_args(tiny_model_dir, run_dir, "--seq-len", "127"), capsys, out,
                         "random 127-token prompts almost never survive decode -> encode")
    assert "--no-retokenize" in line and "--initial-prompt" in line
    assert not run_dir.exists()


def test_bad_files_are_named(tiny_model_dir, tmp_path, files, capsys):
    out = tmp_path / "results"
    out.mkdir()
    run_dir = out / "run"
    cases = [
        (f"resid:L1:{files / 'text.npy'}", f"residual vector file '{files / 'text.npy'}' is not "
                                           "a readable .npy array"),
        (f"resid:L1:{files / 'zeros.npy'}", "residual vector 'zeros' is all zeros or holds NaN"),
        (f"resid:L1:{files / 'nan.npy'}", "residual vector 'nan' is all zeros or holds NaN"),
        (f"sae:{files / 'sae_no_bdec'}:3", f"{files / 'sae_no_bdec' / 'sae_weights.safetensors'}",
         "lack", "b_dec"),
        (f"sae:{files / 'sae_bad_json'}:3", f"{files / 'sae_bad_json' / 'cfg.json'}", "JSON"),
    ]
    for target, *messages in cases:
        fails_cleanly(dream_args(tiny_model_dir, run_dir, target=target), capsys, tmp_path,
                      *messages)


def test_resume_needs_a_run_and_an_intact_one(tiny_model_dir, finished_run, tmp_path, capsys):
    out = tmp_path / "results"
    (out / "empty").mkdir(parents=True)
    fails_cleanly(dream_args(tiny_model_dir, out / "missing", "--resume"), capsys, out,
                  f"--resume: {out / 'missing'} does not exist, so there is nothing to resume")
    fails_cleanly(dream_args(tiny_model_dir, out / "empty", "--resume"), capsys, out,
                  f"--resume: {out / 'empty'} holds no run (no config.json)")

    unfinished = out / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "summary.json").unlink()
    data = (unfinished / "history.npz").read_bytes()
    (unfinished / "history.npz").write_bytes(data[:len(data) // 2])      # a copy cut short
    fails_cleanly(dream_args(tiny_model_dir, unfinished, "--resume"), capsys, out,
                  f"{unfinished / 'history.npz'} is damaged or truncated (BadZipFile")
    (unfinished / "history.npz").write_bytes(data)
    (unfinished / "config.json").write_text('{"iters": 2,')
    fails_cleanly(dream_args(tiny_model_dir, unfinished, "--resume"), capsys, out,
                  f"{unfinished / 'config.json'} is damaged (not valid JSON")


def test_frontier_names_a_damaged_file(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "frontier.json").write_text("[{")
    fails_cleanly(["frontier", str(run_dir)], capsys, tmp_path,
                  f"{run_dir / 'frontier.json'} is damaged (not valid JSON")


def test_mine_split_of_a_single_file_is_refused(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "def f(x): return x"}) + "\n")
    fails_cleanly(["mine", "--model", str(tiny_model_dir), "--dataset", str(data), "--split",
                   "validation", "--layers", "1", "--out", str(tmp_path / "mined"),
                   "--no-progress"], capsys, tmp_path,
                  f"--split validation: {data} is a single file, which is one split")


def test_sweep_checks_every_target_before_running_any(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    argv = ["sweep", "--model", str(tiny_model_dir), "--targets", "L1.N5,L9.N0,L1.N6",
            "--seeds", "0-1", "--out", str(out), *SMALL]
    fails_cleanly(argv, capsys, out, "2 of 6 jobs cannot run, so none was started: L9.N0 "
                                     "(seed 0): layer 9 is out of range; allowed 0..1")
    fails_cleanly(argv[:4] + ["L1.N5"] + argv[5:] + ["--checkpoint-every", "0"], capsys, out,
                  "checkpoint_every must be a positive integer, got 0")


def test_full_disk_keeps_the_checkpoint_and_says_how_to_resume(tiny_model_dir, tmp_path,
                                                               monkeypatch, capsys):
    """The second checkpoint write meets a full disk (the write, then the clean-up, fail: two
    chained OSErrors); the first checkpoint stays, and the printed command finishes the run."""
    run_dir = tmp_path / "run"
    argv = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
            str(run_dir), *SMALL, "--iters", "5", "--checkpoint-every", "2"]
    real, calls = history.atomic_write, []

    def full_disk(path, write):
        calls.append(path)
        if len(calls) == 4:     # config, provenance, checkpoint at 2 iterations, checkpoint at 4
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise OSError(errno.ENOSPC, "No space left on device") from None
        real(path, write)
    monkeypatch.setattr(history, "atomic_write", full_disk)
    monkeypatch.setattr(file_writes, "atomic_write", full_disk)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"the disk is full writing {run_dir / 'history.npz'}" in err
    assert len(fd.History.load(run_dir / "history.npz")) == 2
    assert not (run_dir / "summary.json").exists()
    resume = err.split("resume with: ")[1].strip()
    assert resume.endswith("--resume")

    monkeypatch.undo()
    assert main(shlex.split(resume)[1:]) == 0
    assert len(fd.History.load(run_dir / "history.npz")) == 5 and runs.is_complete(run_dir)


def test_internal_errors_keep_their_traceback(finished_run, monkeypatch, capsys):
    """A ValueError that is not about the input (a bug) is not passed off as a user error."""
    def broken(run_dirs):
        raise ValueError("an internal invariant broke")
    monkeypatch.setattr(runs, "merged_frontier", broken)
    assert main(["frontier", str(finished_run)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal invariant broke" in err
    assert err.strip().splitlines()[-1].startswith("fluentdream frontier: internal error "
                                                   "(ValueError); this is a bug in fluentdream")
