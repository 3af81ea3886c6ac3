"""Checkpoint and resume through the real command line: SIGKILL, then Ctrl-C (SIGINT), then
resume to the end; the History must equal an uninterrupted run of the same seed (DESIGN §7)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.runs import read_json

SETTINGS = ["--iters", "24", "--population-size", "4", "--explore-per-pop", "8", "--topk", "32",
            "--restart-frequency", "5", "--checkpoint-every", "3", "--seed", "3"]
COMPARED = ("ids", "target", "xentropy", "kept", "restart_lambda")


def _dream(model_dir: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fluentdream.cli", "dream", "--model", str(model_dir),
           "--target", "L1.N5", "--run-dir", str(run_dir), "--wandb", "disabled", *SETTINGS, *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # as the reference below
    # A shell that starts a job in the background (CI wrappers, nohup ... &) leaves SIGINT ignored,
    # and Python then never raises KeyboardInterrupt: give the child the default, as a terminal has.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, after_ns: int = 0) -> None:
    """Poll until `path` is (re)written after `after_ns`; fail if the process ends first."""
    deadline = time.monotonic() + 120
    while not (path.exists() and path.stat().st_mtime_ns > after_ns):
        assert proc.poll() is None, f"dream ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)


def test_kill_interrupt_resume_equals_uninterrupted(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "history.npz"

    proc = _dream(tiny_model_dir, run_dir)
    _wait_for_checkpoint(proc, ckpt)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(fd.History.load(ckpt))
    assert 3 <= killed_at < 24 and not (run_dir / "summary.json").exists()

    # resuming with other settings is refused, before anything is written
    before = ckpt.stat().st_mtime_ns
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
            str(run_dir), "--wandb", "disabled", "--no-progress", *SETTINGS]
    assert main(args + ["--topk", "16", "--resume"]) == 2
    assert "topk (saved 32, requested 16)" in capsys.readouterr().err
    assert main(args) == 2                                   # no --resume: refused too
    assert "--resume" in capsys.readouterr().err
    assert ckpt.stat().st_mtime_ns == before

    proc = _dream(tiny_model_dir, run_dir, "--resume")
    _wait_for_checkpoint(proc, ckpt, after_ns=before)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    interrupted_at = len(fd.History.load(ckpt))
    assert killed_at < interrupted_at < 24 and not (run_dir / "summary.json").exists()
    assert "resume with: fluentdream dream" in err and err.rstrip().endswith("--resume")

    proc = _dream(tiny_model_dir, run_dir, "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "24 iterations; run saved to" in out

    resumed = fd.History.load(ckpt)
    dtype = read_json(run_dir / "config.json")["dtype"]       # what --dtype auto resolved to
    assert dtype == fd.fast_dtype("cpu")
    lm = fd.load_model(str(tiny_model_dir), dtype=dtype)
    cfg = fd.EPOConfig(iters=24, population_size=4, explore_per_pop=8, topk=32,
                       restart_frequency=5, seed=3, dtype=dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # same reduction order as the subprocesses
    try:
        straight = fd.epo(lm, fd.parse_target("L1.N5", lm), cfg).arrays()
    finally:
        torch.set_num_threads(threads)
    got = resumed.arrays()
    for name in COMPARED:
        same = [np.array_equal(a, b, equal_nan=name != "ids")
                for a, b in zip(got[name], straight[name])]
        assert all(same) and len(same) == 24, (name, same.index(False) if False in same else None,
                                                killed_at, interrupted_at)
    assert resumed.meta["resumed_at"] == [killed_at, interrupted_at]
    prov = read_json(run_dir / "provenance.json")
    assert prov["resumed_from_iteration"] == interrupted_at
    assert len(prov["previous_sessions"]) == 2 and prov["previous_sessions"][1]["interrupted"]


@pytest.mark.parametrize("flag", ["--resume", ""])
def test_complete_run_is_never_rerun(tiny_model_dir, tmp_path, capsys, flag):
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
            str(tmp_path / "r"), "--wandb", "disabled", "--no-progress", "--iters", "2",
            "--population-size", "2", "--explore-per-pop", "4", "--topk", "16"]
    assert main(args) == 0
    capsys.readouterr()
    summary = (tmp_path / "r" / "summary.json").read_bytes()
    code = main(args + [flag] if flag else args)
    out, err = capsys.readouterr()
    if flag:
        assert code == 0 and "already complete" in out
    else:
        assert code == 2 and "already holds a complete run" in err and len(err.splitlines()) == 1
    assert (tmp_path / "r" / "summary.json").read_bytes() == summary
