"""Settings checked before a run loads, computes or writes anything: device, prompt length.

    check_prompt_length(lm, seq_len=600, random_draw=True)
    # fd.UserError: seq_len 600 exceeds the 512 positions of model 'embedded'; choose --seq-len <= 512

Two limits: the model's positions (models.max_positions), and, for random starting prompts that
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
from pathlib import Path

import torch

from ..errors import UserError
from .tokens import drawable_tokens, retokenizes
from ..models.load import max_positions

# A prompt slot gets 1000 random draws (epo.initial_prompts): at survival 0.003 one slot still
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


def check_device(device: str | None) -> None:
    """Raise UserError for a device string torch does not parse, or a device this machine lacks
    (before a model is loaded onto it)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise UserError(f"device {device!r}: CUDA is not available ({why}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {device!r} does not exist; this machine has {n} CUDA "
                            f"device(s): cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device type {dev.type!r} is not supported; allowed: cpu, cuda, cuda:N, mps")


def writable_dir(path: Path) -> Path:
    """Create `path` (and parents) or raise a UserError saying why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fluentdream-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {str(path)!r} is not writable ({e.strerror}); "
                        "choose a directory you can write to") from None
    return path
