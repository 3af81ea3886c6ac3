"""Presets of the command line (`--preset`): paper is Table 1 exactly, fast its stated changes;
a resume keeps the preset the run was made with."""
from __future__ import annotations

import dataclasses
import json

import pytest

import fluentdream as fd
from fluentdream.cli import build_parser, config_from_args, main
from fluentdream.cli.settings import DEFAULT_PRESET
from fluentdream.core.config import preset


def parsed(*argv: str):
    return build_parser().parse_args(["dream", "--model", "m", "--target", "L0.N0", *argv])


def fields(cfg: fd.EPOConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "extra"}


def test_paper_preset_is_table_1_field_for_field():
    cfg = config_from_args(parsed("--preset", "paper", "--dtype", "float32"))
    assert fields(cfg) == fields(fd.EPOConfig(dtype="float32"))
    assert cfg.extra["preset"] == "paper"


def test_fast_preset_changes_only_what_it_says_and_stays_within_seq_len():
    paper, fast = fields(preset("paper")), fields(preset("fast"))
    changed = {k for k in paper if paper[k] != fast[k]}
    assert changed == {"topk", "restart_mode", "operators", "min_len", "max_len"}
    assert (fast["topk"], fast["restart_mode"], fast["min_len"], fast["max_len"]) == (128, "frontier", 8, 12)
    assert preset("fast", seq_len=24).max_len == 24 and preset("fast", seq_len=24).min_len == 16


def test_flags_override_the_preset_and_the_default_is_stated():
    cfg = config_from_args(parsed("--preset", "fast", "--topk", "64"))
    assert cfg.topk == 64 and cfg.restart_mode == "frontier"
    assert config_from_args(parsed()).extra["preset"] == DEFAULT_PRESET
    dream = build_parser()._subparsers._group_actions[0].choices["dream"]
    assert f"[default: {DEFAULT_PRESET};" in " ".join(dream.format_help().split())


def test_unknown_preset_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parsed("--preset", "turbo")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "turbo" in err and "paper" in err and "fast" in err
    with pytest.raises(fd.UserError, match="unknown preset 'turbo'; allowed: paper, fast"):
        preset("turbo")


def test_resume_keeps_the_runs_preset(tiny_model_dir, tmp_path):
    run = tmp_path / "r"
    common = ["dream", "--model", str(tiny_model_dir), "--target", "L0.N0", "--run-dir", str(run),
              "--population-size", "2", "--explore-per-pop", "4", "--topk", "8", "--seq-len", "6",
              "--no-progress", "--dtype", "float32"]
    assert main([*common, "--iters", "2", "--preset", "fast"]) == 0
    assert main([*common, "--iters", "3", "--resume"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["extra"]["preset"] == "fast" and saved["restart_mode"] == "frontier"
    assert (saved["min_len"], saved["max_len"]) == (4, 6) and saved["iters"] == 3
