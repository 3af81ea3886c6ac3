"""`fluentdream dream` end to end, in process and as a real subprocess, and every bad input of
DESIGN §3: one line on stderr, exit status 2, no traceback, no run directory left behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

import fluentdream as fd
from conftest import build_model
from fluentdream.cli import main

SMALL = ["--iters", "3", "--population-size", "4", "--explore-per-pop", "8", "--topk", "32",
         "--seq-len", "8", "--restart-frequency", "2", "--wandb", "disabled", "--no-progress"]


def dream(model_dir, out, *extra):
    return ["dream", "--model", str(model_dir), "--target", "L0.N3", "--out", str(out),
            *SMALL, *extra]


def check_run(out, stdout: str) -> None:
    runs = list(out.iterdir())
    assert len(runs) == 1
    run = runs[0]
    for name in ("config.json", "provenance.json", "history.npz", "frontier.json", "summary.json"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    hist = fd.History.load(run / "history.npz")
    assert len(hist) == 3 and hist.meta["target"] == "L0.N3"
    assert "activation" in stdout and "xentropy" in stdout and str(run) in stdout
    front = fd.pareto_frontier([hist])
    assert f"{len(front)} frontier points from 3 iterations" in stdout


def test_dream_in_process(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(dream(tiny_model_dir, out)) == 0
    captured = capsys.readouterr()
    check_run(out, captured.out)
    assert "Traceback" not in captured.err


def test_dream_as_a_subprocess(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fluentdream.cli", *dream(tiny_model_dir, out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_run(out, proc.stdout)
    # A bad input through the real process: one line, status 2, no traceback.
    proc = subprocess.run([sys.executable, "-m", "fluentdream.cli",
                           *dream(tiny_model_dir, tmp_path / "bad", "--seq-len", "1")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "seq_len must be an integer of at least 2" in proc.stderr
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


@pytest.fixture(scope="module")
def other_vocab_dirs(tmp_path_factory, tokenizer):
    """Two tiny models whose vocabulary differs from tiny_model_dir's: another embedding size,
    and the same size with a tokenizer that has one more token."""
    bigger = tmp_path_factory.mktemp("vocab1100")
    build_model("gpt_neox", vocab=1100).save_pretrained(bigger)
    tokenizer.save_pretrained(bigger)
    other_tok = tmp_path_factory.mktemp("othertok")
    build_model("gpt_neox", seed=1).save_pretrained(other_tok)       # same embedding size
    tokenizer.save_pretrained(other_tok)
    tok = AutoTokenizer.from_pretrained(other_tok)
    tok.add_tokens(["zqxj"])
    tok.save_pretrained(other_tok)
    return bigger, other_tok


def bad_inputs(model_dir, tmp_path, other_vocab_dirs):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    bigger, other_tok = other_vocab_dirs
    return {
        "unknown model": (["--model", "no-such-org/no-such-model"], "cannot load model"),
        "missing model dir": (["--model", str(tmp_path / "nowhere" / "model")], "does not exist"),
        "layer out of range": (["--target", "L2.N3"], "layer 2 is out of range; allowed 0..1"),
        "neuron out of range": (["--target", "L0.N256"], "out of range; allowed 0..255"),
        "malformed target": (["--target", "L0-N3"], "cannot parse target 'L0-N3'; allowed forms"),
        "multi-token logit": (["--target", "logit: function return"], "exactly one token"),
        "head out of range": (["--target", "attn:L0.H4.K0"], "head 4 is out of range"),
        "key beyond the prompt": (["--target", "attn:L0.H0.K8"], "key position"),
        "position beyond the prompt": (["--target", "L0.N3@8"], "position must be"),
        "seq_len < 2": (["--seq-len", "1"], "seq_len must be an integer of at least 2"),
        "topk above the vocabulary": (["--topk", "5000"], "topk=5000 exceeds"),
        "fluency vocabulary size": (["--fluency-model", str(bigger)], "different vocabularies"),
        "fluency tokenizer": (["--fluency-model", str(other_tok)], "different vocabularies"),
        "unwritable output": (["--out", str(blocker / "sub")], "is not writable"),
        "initial prompt length": (["--initial-prompt", " return the list"],
                                  "initial_prompt encodes to 3 tokens; seq_len is 8"),
    }


CASES = ["unknown model", "missing model dir", "layer out of range", "neuron out of range",
         "malformed target", "multi-token logit", "head out of range", "key beyond the prompt",
         "position beyond the prompt", "seq_len < 2", "topk above the vocabulary",
         "fluency vocabulary size", "fluency tokenizer", "unwritable output",
         "initial prompt length"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tiny_model_dir, tmp_path,
                                                          other_vocab_dirs, capsys):
    flags, message = bad_inputs(tiny_model_dir, tmp_path, other_vocab_dirs)[case]
    out = tmp_path / "results"
    argv = dream(tiny_model_dir, out)
    argv[argv.index("--out") + 1] = str(out)
    argv += flags              # argparse keeps the last value of a repeated flag
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fluentdream dream: error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    # Nothing half-written: no run directory anywhere under the output directory.
    assert not out.exists() or list(out.iterdir()) == []
