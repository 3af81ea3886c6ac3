"""EPO hyperparameters: one frozen dataclass, a docstring under every field (paper Table 1).

    cfg = fd.EPOConfig(seed=0)                 # the paper's defaults
    cfg = fd.EPOConfig(iters=50, topk=64)      # anything else is a keyword away
    cfg.lambdas                                # the M fluency penalties, log-spaced

Field names follow the paper's symbols or the reference code's names so that results compare.
`fields_help()` feeds the command line's `--help` and the class docstring `help(fd.EPOConfig)`
shows, so the three cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

DTYPES = ("auto", "float32", "float16", "bfloat16")
OPERATORS = ("swap", "swap2", "insert", "delete")   # fluentdream.core.operators
RESTART_MODES = ("collapse", "frontier", "distinct")


@dataclass(frozen=True)
class EPOConfig:
    iters: int = 300
    """T: number of EPO iterations (paper Table 1: 300)."""
    population_size: int = 8
    """M: population members, one per fluency penalty lambda_i (Table 1: 8)."""
    explore_per_pop: int = 32
    """r: children made by each member per iteration (Table 1: 32)."""
    topk: int = 512
    """k: candidate tokens per position, ranked by the one-hot gradient (Table 1: 512)."""
    x_penalty_min: float = 0.1
    """Smallest fluency penalty lambda; the M penalties are log-spaced from here (Table 1: 0.1)."""
    x_penalty_max: float = 10.0
    """Largest fluency penalty lambda (Table 1: 10)."""
    restart_frequency: int = 30
    """T_restart: restart every this many iterations, iteration 0 included; 0 never restarts (Table 1: 30)."""
    restart_xentropy_min: float = 0.667
    """Lower end of the uniform draw of the restart penalty lambda_r (Table 1: 0.667)."""
    restart_xentropy_max: float = 6.0
    """Upper end of the uniform draw of the restart penalty lambda_r (Table 1: 6.0)."""
    restart_mode: str = "collapse"
    """What a restart puts in the slots (fluentdream.core.steps.restart): collapse = every slot takes
    the one pool member maximizing f - lambda_r * CE (paper §2); frontier = slot i takes the winner
    at its own penalty of M stratified draws over the same range (a spread of frontier points);
    distinct = the M best distinct prompts under lambda_r, the most fluent to the highest penalty.
    The last two keep diversity, the "more exploration" of paper §4."""
    seq_len: int = 12
    """n: prompt length in tokens (paper §2: 12); initial prompts have this length."""
    min_len: int | None = None
    """Shortest prompt that deletions may leave, in tokens; None = seq_len (fixed length)."""
    max_len: int | None = None
    """Longest prompt that insertions may make, in tokens; None = seq_len (fixed length)."""
    operators: dict = field(default_factory=lambda: {"swap": 1.0}, hash=False)
    """Mutation operators and their probabilities by name (normalized to sum 1; command line:
    swap=0.5,insert=0.25,delete=0.25): swap = one position takes a token of its gradient top-k
    (paper §2), swap2 = two distinct positions at once (paper §4's multi-token swap), insert = a
    new token at a uniform position from the fluency model's next-token top-k, delete = a uniform
    position (fluentdream.core.operators). insert and delete need min_len < max_len."""
    batch_size: int = 256
    """Most prompts scored in one forward pass; lower it if memory runs out."""
    seed: int = 0
    """Seeds the initial prompts and every random choice of the run."""
    initial_prompt: str | None = None
    """Start every member from this text instead of random tokens (must encode to seq_len tokens)."""
    prefix: str = ""
    """Fixed text before the optimized tokens (a chat template's opening, any context), encoded
    once with the model's tokenizer and never mutated; CE then scores x's first token too."""
    suffix: str = ""
    """Fixed text after the optimized tokens, never mutated; the target reads the whole
    sequence's last position (fluentdream.core.context)."""
    retokenize: bool = True
    """Reject prompts whose decoded text does not encode back to the same tokens (target = -inf):
    the search never holds them and every reported dream is text a user can paste back.
    Rejecting them in the search did better on SmolLM2 than passing through them and reporting
    only the others (BENCHMARKS.md, ablation; LOG.md, 2026-12-07)."""
    device: str | None = None
    """Device the model is loaded on ("cpu", "cuda", ...); None = wherever it already is."""
    dtype: str | None = None
    """Model dtype: float32, float16, bfloat16, or auto (bf16 where the device is measured faster in
    it, else fp32: fd.fast_dtype; the command line's default, recorded as what it resolved to);
    None = the checkpoint's own. A model given to fd.epo runs in its own dtype under auto."""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    """Free-form notes stored with the run (not used by the algorithm)."""

    def __post_init__(self) -> None:
        positive = dict(iters=self.iters, population_size=self.population_size,
                        explore_per_pop=self.explore_per_pop, topk=self.topk,
                        batch_size=self.batch_size)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise UserError(f"seq_len must be an integer of at least 2 (the first token is not "
                            f"scored for fluency), got {self.seq_len!r}")
        if not isinstance(self.restart_frequency, int) or self.restart_frequency < 0:
            raise UserError(f"restart_frequency must be an integer >= 0 (0 = never), "
                            f"got {self.restart_frequency!r}")
        if not isinstance(self.seed, int):
            raise UserError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.x_penalty_min <= self.x_penalty_max:
            raise UserError(f"need 0 <= x_penalty_min <= x_penalty_max, got "
                            f"{self.x_penalty_min} and {self.x_penalty_max}")
        if self.population_size > 1 and self.x_penalty_min == 0 and self.x_penalty_max > 0:
            raise UserError("x_penalty_min must be > 0 for log-spaced penalties "
                            "(or set x_penalty_max = 0 too)")
        if not 0 <= self.restart_xentropy_min <= self.restart_xentropy_max:
            raise UserError(f"need 0 <= restart_xentropy_min <= restart_xentropy_max, got "
                            f"{self.restart_xentropy_min} and {self.restart_xentropy_max}")
        if self.restart_mode not in RESTART_MODES:
            raise UserError(f"restart_mode must be one of {', '.join(RESTART_MODES)}, "
                            f"got {self.restart_mode!r}")
        self._check_operators()
        for name in ("prefix", "suffix"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name} must be text (a str; empty for none), "
                                f"got {getattr(self, name)!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, or None (the "
                            f"checkpoint's own), got {self.dtype!r}")

    def _check_operators(self) -> None:
        """Validate min_len, max_len and operators; normalize the probabilities in place (the
        dataclass is frozen, so through object.__setattr__). None lengths stay None, so that
        replace(seq_len=...) moves a fixed length along."""
        for name in ("min_len", "max_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 2):
                raise UserError(f"{name} must be an integer of at least 2, or None (= seq_len), "
                                f"got {value!r}")
        lo, hi = self.length_range
        if not lo <= self.seq_len <= hi:
            raise UserError(f"need min_len <= seq_len <= max_len, got {lo}, {self.seq_len} "
                            f"and {hi}")
        ops = self.operators
        if not isinstance(ops, dict) or not ops:
            raise UserError(f"operators must be a dict of probabilities by name "
                            f"({', '.join(OPERATORS)}), e.g. {{'swap': 0.5, 'insert': 0.25, "
                            f"'delete': 0.25}}, got {ops!r}")
        unknown = sorted(set(ops) - set(OPERATORS))
        if unknown:
            raise UserError(f"unknown operators {unknown}; allowed: {', '.join(OPERATORS)}")
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < np.inf
                   for p in ops.values()) or sum(ops.values()) <= 0:
            raise UserError(f"operator probabilities must be finite numbers >= 0 with a positive "
                            f"sum, got {ops!r}")
        total = float(sum(ops.values()))
        ops = {k: ops[k] / total for k in OPERATORS if ops.get(k, 0) > 0}   # a fixed order
        object.__setattr__(self, "operators", ops)
        resizes = "insert" in ops or "delete" in ops
        if resizes and lo == hi:
            raise UserError(f"insert and delete change the prompt length, so they need "
                            f"min_len < max_len (both are {lo}); set --min-len/--max-len")
        if not resizes and lo != hi:
            raise UserError(f"min_len {lo} and max_len {hi} differ, but only "
                            "insert and delete change the length; add one of them to operators "
                            "or leave min_len and max_len unset")
        if not ("swap" in ops or "swap2" in ops or ("insert" in ops and "delete" in ops)):
            raise UserError("operators need swap or swap2, or both insert and delete, so that a "
                            "prompt at min_len or max_len can still change")

    @property
    def lambdas(self) -> np.ndarray:
        """(M,) fluency penalty of each population slot, log-evenly spaced (paper §2)."""
        if self.x_penalty_min == self.x_penalty_max:
            return np.full(self.population_size, float(self.x_penalty_min))
        return np.geomspace(self.x_penalty_min, self.x_penalty_max, self.population_size)

    @property
    def length_range(self) -> tuple[int, int]:
        """(shortest, longest) prompt length in tokens: min_len and max_len, None = seq_len."""
        return (self.seq_len if self.min_len is None else self.min_len,
                self.seq_len if self.max_len is None else self.max_len)

    @property
    def children(self) -> int:
        """M * r: candidates scored per iteration."""
        return self.population_size * self.explore_per_pop

    def resolved(self) -> "EPOConfig":
        """This config with dtype "auto" replaced by the dtype it means on `device` (or the
        default device), fd.fast_dtype: what a loader uses and a run directory records."""
        if self.dtype != "auto":
            return self
        from ..models.hardware import fast_dtype
        from ..models.load import default_device
        return self.replace(dtype=fast_dtype(self.device or default_device()))

    def replace(self, **changes) -> "EPOConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "EPOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown EPOConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)


# Settings that the command line starts from (`--preset`); the Python API's EPOConfig() is always
# the paper's Table 1. "fast" (a greedier k, exploring restarts and the §4 operators, with prompts
# no longer than the paper's 12 tokens) reached the reference code's frontier soonest in the
# batched runs of 2026-12-03, a throughput measure since retracted (LOG.md, 2026-12-07); its
# single-run time to quality is not measured yet, so it is not the command line's default.
# Prompt lengths of a preset that resizes are relative to seq_len: from two thirds of it up to it.
PRESETS: dict[str, dict] = {
    "paper": {},
    "fast": dict(topk=128, restart_mode="frontier",
                 operators={"swap": 0.5, "swap2": 0.1, "insert": 0.2, "delete": 0.2}),
}
_RESIZING = ("fast",)


def preset(name: str, **changes) -> "EPOConfig":
    """EPOConfig of a named preset (PRESETS), with `changes` on top; the name is kept in
    extra["preset"] so a run's config.json says where its settings came from. A resizing
    preset's prompts range over [2/3 seq_len, seq_len] (8-12 at the paper's 12) unless
    min_len or max_len is given, or operators (then the lengths are the caller's to set)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    settings = {**PRESETS[name], **changes}
    if name in _RESIZING and "operators" not in changes:
        n = settings.get("seq_len", EPOConfig.seq_len)
        settings.setdefault("max_len", n)
        settings.setdefault("min_len", max(2, min(settings["max_len"], round(2 * n / 3))))
    return EPOConfig(**settings, extra={"preset": name})


def parse_operators(text: str) -> dict[str, float]:
    """"swap=0.5,insert=0.25,delete=0.25" -> {"swap": 0.5, ...} (EPOConfig normalizes it)."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"operators must read NAME=PROBABILITY,... such as "
                            f"swap=0.5,insert=0.25,delete=0.25 (names: {', '.join(OPERATORS)}); "
                            f"got {text!r}") from None
    return out


def fields_help(cls=EPOConfig) -> dict[str, str]:
    """Field name -> its docstring, read from the source so --help and code cannot disagree."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant):
            out[node.target.id] = " ".join(str(nxt.value.value).split())
    return out


def _class_doc(cls=EPOConfig) -> str:
    """The class docstring help() shows: every field with its type, default and docstring,
    generated from the field docstrings so help(fd.EPOConfig) says what --help says."""
    lines = ["EPO hyperparameters; the defaults are the paper's (Table 1).", "", "Fields:"]
    helps = fields_help(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines += [f"    {f.name}: {f.type} = {default!r}", f"        {helps[f.name]}"]
    return "\n".join(lines)


EPOConfig.__doc__ = _class_doc()
