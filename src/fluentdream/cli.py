"""The `fluentdream` command (DESIGN §3).

    fluentdream dream --model embedded --target L1.N5 --iters 300 --seed 0
    fluentdream dream --model ./my-hf-model --target "logit: dog" --topk 64

Every user error ends with one line on stderr, exit status 2, no traceback, nothing half-written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import EPOConfig, fields_help


class UserError(Exception):
    """An input problem, shown as one line without a traceback."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """One flag per EPOConfig field, help text from the field's docstring."""
    helps = fields_help()
    defaults = EPOConfig()
    for name, text in helps.items():
        if name in ("extra", "device", "dtype"):
            continue
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, type=kind, default=None, help=f"{text} [default: {default}]")
    p.add_argument("--device", default=None, help=helps["device"])
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help=helps["dtype"])


def config_from_args(args: argparse.Namespace) -> EPOConfig:
    names = set(fields_help()) - {"extra"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return EPOConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluentdream", description=
                                     "Fluent dreaming: prompts that drive a model internal up.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dream", help="optimize fluent prompts for one target (EPO)")
    p.add_argument("--model", required=True, help="'embedded', a local HF directory or a hub name")
    p.add_argument("--target", required=True,
                   help="L1.N5 | 'logit: dog' | resid:L2:7 | attn:L1.H3.K0 | sae:DIR:123")
    p.add_argument("--fluency-model", default=None, help="score fluency with another model "
                   "(same tokenizer); default: the target model")
    p.add_argument("--out", default="results", help="parent directory of the run directory")
    p.add_argument("--run-dir", default=None, help="write the run exactly here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_dream)
    return parser


def _writable_dir(path: Path) -> Path:
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


def cmd_dream(args: argparse.Namespace) -> int:
    from .epo import epo
    from .evaluate import check_same_vocab
    from .frontier import pareto_frontier
    from .models import load_model
    from .runs import progress_callback, save_run, run_dir_for

    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else None
    _writable_dir(run_dir.parent if run_dir else Path(args.out))
    lm = load_model(args.model, device=cfg.device, dtype=cfg.dtype)
    fluency = None
    if args.fluency_model:
        fluency = load_model(args.fluency_model, device=cfg.device, dtype=cfg.dtype)
        check_same_vocab(lm, fluency)
    from .targets import parse_target
    target = parse_target(args.target, lm)
    run_dir = run_dir or run_dir_for(Path(args.out), lm.name, target.name, cfg.seed)
    callback = None if args.no_progress else progress_callback(cfg.iters)
    hist = epo(lm, target, cfg, callback, fluency=fluency)
    front = pareto_frontier([hist], lm.tokenizer)
    save_run(run_dir, hist, front, cfg)
    print(front.table())
    print(f"\n{len(front)} frontier points from {len(hist)} iterations; run saved to {run_dir}")
    if hist.meta.get("interrupted"):
        print("interrupted: the partial run above was saved", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (UserError, ValueError) as e:
        if args.verbose:
            raise
        print(f"fluentdream {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fluentdream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
