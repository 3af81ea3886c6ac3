"""--dtype auto (issue 13): the command line runs in the fast dtype of the device (fd.fast_dtype),
logs it, records what it resolved to, and keeps a resumed run in the dtype it was made in."""
from __future__ import annotations

import logging

import pytest

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.runs.files import read_json


def test_auto_resolves_to_the_fast_dtype_and_nothing_else_changes():
    assert fd.EPOConfig(dtype="auto").resolved().dtype == fd.fast_dtype("cpu")
    for dtype in (None, "float32", "bfloat16"):
        assert fd.EPOConfig(dtype=dtype).resolved().dtype == dtype
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, float16, bfloat16"):
        fd.EPOConfig(dtype="fp8")


def test_a_given_model_runs_in_its_own_dtype_under_auto(tiny_lm):
    cfg = fd.EPOConfig(iters=1, population_size=2, explore_per_pop=4, topk=16, seq_len=6,
                       dtype="auto")
    assert len(fd.epo(tiny_lm, fd.Neuron(1, 5), cfg, progress=False)) == 1


def test_cli_default_is_auto_recorded_resolved_and_kept_on_resume(tiny_model_dir, tmp_path, caplog):
    def dream(run_dir, *extra):
        return main(["-v", "dream", "--model", str(tiny_model_dir), "--target", "L1.N5",
                     "--run-dir", str(run_dir), "--iters", "2", "--population-size", "2",
                     "--explore-per-pop", "4", "--topk", "16", "--seq-len", "6",
                     "--wandb", "disabled", "--no-progress", *extra])

    with caplog.at_level(logging.INFO, logger="fluentdream.cli"):
        assert dream(tmp_path / "auto") == 0
    fast = fd.fast_dtype("cpu")
    assert read_json(tmp_path / "auto" / "config.json")["dtype"] == fast
    assert f"--dtype auto: {fast}" in caplog.text

    assert dream(tmp_path / "fp32", "--dtype", "float32") == 0
    assert dream(tmp_path / "fp32", "--iters", "3", "--resume") == 0      # no --dtype: the saved one
    assert read_json(tmp_path / "fp32" / "config.json")["dtype"] == "float32"
    assert len(fd.History.load(tmp_path / "fp32" / "history.npz")) == 3
