"""Settings checked before a run (fluentdream.core.checks): the model's position limit, the length at
which random prompts stop surviving decode -> encode, and device strings; each against an
independent computation."""
from __future__ import annotations

import math

import pytest
import torch

import fluentdream as fd
from conftest import ARCHS
from fluentdream.core.checks import (MIN_SURVIVAL, check_prompt_length, longest_random_prompt,
                                     pair_survival)
from fluentdream.core.tokens import drawable_tokens
from fluentdream.models import check_device, max_positions


@pytest.mark.parametrize("arch", ARCHS)
def test_max_positions_is_the_config_limit(make_lm, arch):
    assert max_positions(make_lm(arch)) == 128      # conftest: max_position_embeddings / n_positions


def _survives(tokenizer, rows: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B,) bool, with the tokenizer's own decode and encode, one row at a time."""
    return torch.tensor([tokenizer(tokenizer.decode(r, clean_up_tokenization_spaces=False),
                                   add_special_tokens=False)["input_ids"] == r
                         for r in rows.tolist()])


def test_pair_survival_and_the_length_limit(tiny_lm):
    pool = drawable_tokens(tiny_lm).nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(123)          # not the sample pair_survival drew
    pairs = pool[torch.randint(len(pool), (4096, 2), generator=gen)]
    q = _survives(tiny_lm.tokenizer, pairs).float().mean().item()
    assert pair_survival(tiny_lm) == pytest.approx(q, abs=0.02)

    # random n-token prompts survive about q^(n-1) of the time (boundaries fail independently)
    rows = pool[torch.randint(len(pool), (400, 24), generator=gen)]
    assert _survives(tiny_lm.tokenizer, rows).float().mean().item() == pytest.approx(
        q ** 23, abs=0.08)

    q = pair_survival(tiny_lm)
    longest = longest_random_prompt(tiny_lm)
    assert q ** (longest - 1) >= MIN_SURVIVAL > q ** longest
    assert longest == 1 + math.floor(math.log(MIN_SURVIVAL) / math.log(q))
    check_prompt_length(tiny_lm, longest, random_draw=True)
    with pytest.raises(fd.UserError, match=f"choose --seq-len <= {longest}"):
        check_prompt_length(tiny_lm, longest + 1, random_draw=True)
    check_prompt_length(tiny_lm, longest + 1, random_draw=False)   # a given prompt or no check
    with pytest.raises(fd.UserError, match="exceeds the 128 positions"):
        check_prompt_length(tiny_lm, 129, random_draw=False)


def test_epo_checks_the_prompt_length_before_drawing(tiny_lm):
    target = fd.parse_target("L1.N5", tiny_lm)
    with pytest.raises(fd.UserError, match="exceeds the 128 positions"):
        fd.epo(tiny_lm, target, fd.EPOConfig(seq_len=100_000, iters=1))


def test_device_strings():
    check_device(None)
    check_device("cpu")
    for bad, message in [("gpu", "unknown device 'gpu'"), ("meta", "device type 'meta' is not "
                                                                   "supported")]:
        with pytest.raises(fd.UserError, match=message):
            check_device(bad)
    if torch.cuda.is_available():
        check_device("cuda")
        with pytest.raises(fd.UserError, match="does not exist"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(fd.UserError, match="CUDA is not available"):
            check_device("cuda:0")
