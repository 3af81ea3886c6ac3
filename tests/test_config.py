"""EPOConfig: the paper's Table 1 as defaults, validation, self-documentation, round trips."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.core.config import fields_help


def test_paper_defaults():
    cfg = fd.EPOConfig()
    # Paper Table 1 and §2.
    assert (cfg.iters, cfg.population_size, cfg.explore_per_pop, cfg.topk) == (300, 8, 32, 512)
    assert (cfg.x_penalty_min, cfg.x_penalty_max) == (0.1, 10.0)
    assert (cfg.restart_frequency, cfg.restart_xentropy_min, cfg.restart_xentropy_max) == (30, 0.667, 6.0)
    assert cfg.seq_len == 12
    assert cfg.children == 8 * 32


def test_lambdas_are_the_papers_eight_log_spaced_penalties():
    paper = [0.100, 0.193, 0.373, 0.720, 1.389, 2.683, 5.179, 10.0]
    lam = fd.EPOConfig().lambdas
    assert lam.shape == (8,)
    np.testing.assert_allclose(lam, paper, atol=6e-4)
    np.testing.assert_allclose(np.diff(np.log(lam)), np.log(100) / 7)


def test_equal_penalty_bounds_give_constant_lambdas():
    cfg = fd.EPOConfig(population_size=3, x_penalty_min=0.0, x_penalty_max=0.0)
    assert cfg.lambdas.tolist() == [0.0, 0.0, 0.0]


INVALID = [
    (dict(iters=0), "iters"), (dict(iters=-3), "iters"), (dict(iters=2.5), "iters"),
    (dict(population_size=0), "population_size"), (dict(explore_per_pop=0), "explore_per_pop"),
    (dict(topk=0), "topk"), (dict(batch_size=0), "batch_size"), (dict(topk="512"), "topk"),
    (dict(seq_len=1), "seq_len"), (dict(seq_len=0), "seq_len"), (dict(seq_len=6.5), "seq_len"),
    (dict(restart_frequency=-1), "restart_frequency"),
    (dict(restart_frequency=2.5), "restart_frequency"),
    (dict(x_penalty_min=2.0, x_penalty_max=1.0), "x_penalty_min"),
    (dict(x_penalty_min=-1.0), "x_penalty_min"),
    (dict(x_penalty_min=float("nan")), "x_penalty_min"),
    (dict(x_penalty_min=0.0), "x_penalty_min"),       # log spacing from zero
    (dict(restart_xentropy_min=7.0), "restart_xentropy_min"),
    (dict(restart_xentropy_min=-0.5), "restart_xentropy_min"),
    (dict(dtype="float64"), "dtype"),
    (dict(seed=1.5), "seed"),
]


@pytest.mark.parametrize("kwargs, field", INVALID, ids=[str(k) for k, _ in INVALID])
def test_invalid_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        fd.EPOConfig(**kwargs)
    assert field in str(err.value)
    # The message says what is allowed, not just that something is wrong.
    assert any(w in str(err.value) for w in ("must", "need", "allowed", "one of"))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        fd.EPOConfig().iters = 5


def test_every_field_has_a_docstring():
    helps = fields_help()
    names = [f.name for f in dataclasses.fields(fd.EPOConfig)]
    assert sorted(helps) == sorted(names)
    for name in names:
        assert len(helps[name]) > 15, name


def test_dict_and_json_round_trip():
    cfg = fd.EPOConfig(iters=7, topk=64, seed=3, initial_prompt="hello", dtype="bfloat16",
                       extra={"note": "x"})
    assert fd.EPOConfig.from_dict(cfg.to_dict()) == cfg
    assert fd.EPOConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert fd.EPOConfig.from_dict(cfg.to_dict()).extra == {"note": "x"}


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown EPOConfig fields.*'bogus'"):
        fd.EPOConfig.from_dict(dict(fd.EPOConfig().to_dict(), bogus=1))


def test_replace_validates():
    assert fd.EPOConfig().replace(iters=5).iters == 5
    with pytest.raises(ValueError, match="seq_len"):
        fd.EPOConfig().replace(seq_len=1)


def test_help_shows_every_field_with_its_docstring_and_default():
    import pydoc
    import re

    text = pydoc.render_doc(fd.EPOConfig, renderer=pydoc.plaintext)
    shown = " ".join(re.sub(r"(?m)^ \|", "", text).split())     # drop help()'s margin
    # Two docstrings copied by hand from the class body, so a broken parser cannot hide.
    assert "iters: int = 300 T: number of EPO iterations (paper Table 1: 300)." in shown
    assert ("restart_frequency: int = 30 T_restart: restart every this many iterations, "
            "iteration 0 included; 0 never restarts (Table 1: 30).") in shown
    defaults = fd.EPOConfig()
    for f in dataclasses.fields(fd.EPOConfig):
        entry = f"{f.name}: {f.type} = {getattr(defaults, f.name)!r} {fields_help()[f.name]}"
        assert entry in shown, f.name
