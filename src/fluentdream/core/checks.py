"""Settings refused before a run computes anything: `check_run` (dtype, device, top-k, the
target, prompt lengths, the initial prompt) and the prompt length limits it applies.

    check_run(lm, cfg, target)                    # fd.UserError naming the first bad setting
    check_prompt_length(lm, seq_len=600, random_draw=True)
    # fd.UserError: seq_len 600 exceeds the 512 positions of model 'embedded'; choose --seq-len <= 512

Two limits: the model's positions (fluentdream.models.max_positions), and, for random starting prompts that
must survive decode -> encode (EPOConfig.retokenize), the length such prompts can still be drawn
at. Boundaries merge or split between neighbouring tokens, so a random n-token prompt survives
with probability about q^(n-1), q the survival rate of random token pairs (measured on the
embedded tokenizer: q = 0.965; predicted vs drawn survival 0.67/0.73 at n = 12, 0.011/0.008 at
n = 128). Without this check a hopeless length spends minutes in the draw and then blames
retokenization.
"""
from __future__ import annotations

import functools
import math

import torch

from ..errors import UserError
from ..models.load import DTYPES
from ..models.loaded import max_positions
from ..targets.kinds import Target
from .config import EPOConfig
from .context import Context
from .steps import initial_prompts
from .tokens import allowed_tokens, drawable_tokens, retokenizes

# A prompt slot gets 1000 random draws (steps.initial_prompts): at survival 0.003 one slot still
# fails with probability e^-3, so longer prompts are refused rather than attempted.
MIN_SURVIVAL = 0.003
PAIRS = 4096


def pair_survival(lm) -> float:
    """Fraction of random pairs of drawable tokens whose decoded text encodes back to the pair."""
    return _pair_survival(lm.tokenizer, drawable_tokens(lm))


@functools.lru_cache(maxsize=8)
def _pair_survival(tokenizer, allowed: torch.Tensor) -> float:
    # `allowed` is drawable_tokens' cached (V,) mask, the same object for one tokenizer; a fixed
    # generator leaves the run's random stream untouched.
    pool = allowed.nonzero().squeeze(1)                                        # (K,)
    pairs = pool[torch.randint(len(pool), (PAIRS, 2), generator=torch.Generator().manual_seed(0))]
    return float(retokenizes(tokenizer, pairs).mean())                       # pairs: (PAIRS, 2)


def longest_random_prompt(lm) -> int:
    """The longest random prompt that survives decode -> encode with probability MIN_SURVIVAL."""
    q = pair_survival(lm)
    if q >= 1.0:
        return math.inf
    if q <= 0.0:
        return 1
    return 1 + int(math.log(MIN_SURVIVAL) / math.log(q))


def check_prompt_length(lm, seq_len: int, random_draw: bool, fixed: int = 0,
                        name: str = "seq_len") -> None:
    """Raise UserError when `lm` cannot take seq_len-token prompts with `fixed` more tokens of
    context (EPOConfig.prefix and suffix) around them, or (random_draw) when random prompts of
    that length almost never survive decode -> encode. `name`: the setting that gave the length
    (seq_len or max_len), as the message names it."""
    limit, flag = max_positions(lm), "--" + name.replace("_", "-")
    if limit is not None and fixed and seq_len + fixed > limit:
        raise UserError(f"{name} {seq_len} plus the {fixed} tokens of --prefix and --suffix "
                        f"exceeds the {limit} positions of model {lm.name!r}; choose {flag} "
                        f"<= {limit - fixed} or a shorter prefix/suffix")
    if limit is not None and seq_len > limit:
        raise UserError(f"{name} {seq_len} exceeds the {limit} positions of model {lm.name!r}; "
                        f"choose {flag} <= {limit}")
    if random_draw and seq_len > (longest := longest_random_prompt(lm)):
        q = pair_survival(lm)
        raise UserError(f"random {seq_len}-token prompts almost never survive decode -> encode "
                        f"with this tokenizer (about {q ** (seq_len - 1):.0e} of them, from "
                        f"{q:.1%} of token pairs); choose --seq-len <= {longest}, give "
                        "--initial-prompt, or pass --no-retokenize")


def check_run(lm, cfg: EPOConfig, target: Target) -> None:
    """Raise UserError for settings that cannot run on `lm`, before anything is computed."""
    context = Context.of(lm, cfg)        # raises for context text that encodes to no tokens
    if cfg.dtype not in (None, "auto") and lm.dtype != DTYPES[cfg.dtype]:
        raise UserError(f"cfg.dtype is {cfg.dtype} but the model is {lm.dtype}; load it with "
                        f"fd.load_model(..., dtype={cfg.dtype!r}) or set dtype='auto'")
    if cfg.device is not None and lm.device.type != torch.device(cfg.device).type:
        raise UserError(f"cfg.device is {cfg.device} but the model is on {lm.device}")
    if cfg.topk > int(allowed_tokens(lm).sum()):
        raise UserError(f"topk={cfg.topk} exceeds the {int(allowed_tokens(lm).sum())} usable tokens")
    target.validate(lm)
    shortest, longest = cfg.length_range
    if hasattr(target, "check_seq_len"):     # positions count in prefix + x + suffix
        target.check_seq_len(context.length(shortest))   # every length must hold the position
    check_prompt_length(lm, cfg.seq_len, random_draw=cfg.retokenize and cfg.initial_prompt is None,
                        fixed=context.P + context.S)
    if longest > cfg.seq_len:
        check_prompt_length(lm, longest, random_draw=False, fixed=context.P + context.S,
                            name="max_len")
    if cfg.initial_prompt is not None:
        initial_prompts(lm, cfg, torch.Generator())   # raises if it does not fit seq_len
