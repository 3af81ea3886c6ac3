"""The EPO settings flags of `dream` and `sweep`: one flag per EPOConfig field (its help is the
field's docstring), on top of a preset.

    add_config_args(parser)
    cfg = config_from_args(args)        # --preset (default DEFAULT_PRESET), then the flags given

Imports: core and the shared modules.
"""
from __future__ import annotations

import argparse

from ..core.config import PRESETS, EPOConfig, fields_help, parse_operators, preset
from ..errors import UserError

# What `dream` and `sweep` start from (core.config.PRESETS). Table 1 until single-run times to
# the reference's frontier show another preset sooner on both models (issue 29, item 6; LOG.md,
# 2026-12-07: measured on the embedded model only so far). The Python API's EPOConfig() and the
# experiments are Table 1 whatever this says.
DEFAULT_PRESET = "paper"


def add_config_args(p: argparse.ArgumentParser) -> None:
    """One flag per EPOConfig field, help text from the field's docstring and the default from
    DEFAULT_PRESET; then --preset, --device and --dtype."""
    helps = fields_help()
    defaults = preset(DEFAULT_PRESET)
    for name, text in helps.items():
        if name in ("extra", "device", "dtype"):
            continue
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif default == "":                                   # --prefix, --suffix
            p.add_argument(flag, default=None, metavar="TEXT", help=f"{text} [default: none]")
        elif name in ("min_len", "max_len"):
            shown = "seq_len" if default is None else default
            p.add_argument(flag, type=int, default=None, help=f"{text} [default: {shown}]")
        elif name == "operators":
            p.add_argument(flag, type=operators_arg, default=None, metavar="NAME=P,...",
                           help=f"{text} [default: {_operators_text(default)}]")
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, type=kind, default=None, help=f"{text} [default: {default}]")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"the settings the flags above change: paper = Table 1 of the paper; "
                   f"fast = {_preset_text('fast')}, prompts of 2/3 seq_len to seq_len tokens "
                   f"[default: {DEFAULT_PRESET}; with --resume, the saved run's]")
    p.add_argument("--device", default=None, help=helps["device"])
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "float16", "bfloat16"],
                   help=f"{helps['dtype']} [default: auto; with --resume, the saved run's]")


def _preset_text(name: str) -> str:
    """A preset as the flags that make it."""
    return " ".join(f"--{k.replace('_', '-')} "
                    + (_operators_text(v) if isinstance(v, dict) else str(v))
                    for k, v in PRESETS[name].items())


def _operators_text(operators: dict[str, float]) -> str:
    """{"swap": 0.5, "insert": 0.5} -> "swap=0.5,insert=0.5", as --operators takes it."""
    return ",".join(f"{o}={q:g}" for o, q in operators.items())


def config_from_args(args: argparse.Namespace, default_preset: str = DEFAULT_PRESET) -> EPOConfig:
    """The EPOConfig of the flags given on top of --preset (default_preset when not given);
    dtype "auto" unless --dtype is given."""
    names = set(fields_help()) - {"extra"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return preset(getattr(args, "preset", None) or default_preset, **{"dtype": "auto", **given})


def operators_arg(text: str) -> dict[str, float]:
    """argparse type of --operators NAME=P,...: probabilities by name, or argparse's one-line
    error (also used by benchmarks/time_to_quality.py)."""
    try:
        return parse_operators(text)
    except UserError as e:                 # argparse prints it as one line, exit status 2
        raise argparse.ArgumentTypeError(str(e)) from None
