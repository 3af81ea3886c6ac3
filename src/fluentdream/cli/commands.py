"""The `fluentdream` command (DESIGN §3).

    fluentdream dream --model embedded --target L1.N5 --iters 300 --seed 0
    fluentdream dream --model ./my-hf-model --target "logit: dog" --topk 64
    fluentdream dream ... --run-dir results/x --resume     # continue after a kill or Ctrl-C
    fluentdream frontier results/a results/b               # one frontier over several runs
    fluentdream sweep --model embedded --targets L1.N5,L1.N6 --seeds 0-3 --executor ray --out DIR
    fluentdream report results/a results/b --out site      # pages of the runs (cli/report.py)

Every user error (fd.UserError, a full disk, a permission denied) ends with one line on stderr,
exit status 2, no traceback, nothing half-written; any other exception is a bug and shows its
traceback and where to report it (exit status 1).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path

from ..core.config import EPOConfig
from ..errors import ISSUE_TRACKER, UserError
from .errors import DISK_FULL, os_error, user_fault
from .mine import add_mine_parser
from .report import add_report_parser, report_command
from .settings import add_config_args, config_from_args

log = logging.getLogger(__name__)


def _resolve_dtype(cfg: EPOConfig) -> EPOConfig:
    """dtype "auto" -> the dtype fd.fast_dtype picks for the device, logged; the run's config
    then records what ran."""
    out = cfg.resolved()
    if cfg.dtype == "auto":
        log.info("--dtype auto: %s on %s", out.dtype, cfg.device or "the default device")
    return out


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
    p.add_argument("--out", default="results", help="make a named run directory "
                   "(MODEL__TARGET__seedS) inside this directory [default: results]")
    p.add_argument("--run-dir", default=None, help="write the run exactly here (overrides --out)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in the run "
                   "directory from its checkpoint (same arguments as the first time; --iters "
                   "defaults to the saved run's, and a larger --iters extends a finished run)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="save "
                   "history.npz every N >= 1 iterations [default: restart_frequency, or 30 if 0]")
    _add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=cmd_dream)
    _add_run_commands(sub)
    add_mine_parser(sub)
    add_report_parser(sub)
    return parser


def cmd_dream(args: argparse.Namespace) -> int:
    """Take the run directory's lock first (one writer per run directory, lock.py), so a
    second writer is refused in one line before it loads anything, and hold it to the end."""
    from ..files import writable_dir
    from ..models.hardware import check_device
    from ..runs.lock import RunLock
    from ..runs import run_dir_for

    cfg = config_from_args(args)
    run_dir = (Path(args.run_dir) if args.run_dir
               else run_dir_for(Path(args.out), args.model, args.target, cfg.seed))
    check_device(cfg.device)
    if args.resume and not run_dir.exists():
        raise UserError(f"--resume: {run_dir} does not exist, so there is nothing to resume; "
                        "drop --resume to start a new run")
    writable_dir(run_dir.parent)
    with RunLock.acquire(run_dir, command=_command(args, resume=args.resume)) as lock:
        return _dream(args, cfg, run_dir, lock)


def _dream(args: argparse.Namespace, cfg: EPOConfig, run_dir: Path, lock) -> int:
    from ..core.tokens import check_same_vocab
    from ..models.load import load_model
    from ..runs import CHECKPOINT, config_diff, is_complete, read_json
    from ..runs import load_run, run_config, run_dream
    from ..targets.kinds import parse_target
    from ..runs.tracking import start_tracker

    if args.resume:
        cfg = _resume_settings(args, run_dir)
    elif (run_dir / CHECKPOINT).exists():
        done = "a complete" if is_complete(run_dir) else "an unfinished"
        raise UserError(f"{run_dir} already holds {done} run; pass --resume to continue an "
                        "unfinished one, or choose another --run-dir/--out")
    cfg = _resolve_dtype(cfg)
    lm = load_model(args.model, device=cfg.device, dtype=cfg.dtype)
    fluency = None
    if args.fluency_model:
        fluency = load_model(args.fluency_model, device=cfg.device, dtype=cfg.dtype)
        check_same_vocab(lm, fluency)
    target = parse_target(args.target, lm)
    config = run_config(cfg, lm.name, target.name, fluency.name if fluency else None)
    if args.resume and is_complete(run_dir) and not config_diff(
            read_json(run_dir / "config.json"), config):
        hist, records, _ = load_run(run_dir)
        print(_records_table(records))
        print(f"\n{run_dir} is already complete ({len(hist)} iterations); nothing to resume "
              f"(--iters N > {len(hist)} extends it)")
        return 0
    tracker = functools.partial(start_tracker, args.wandb, project=args.wandb_project,
                                group=args.wandb_group)
    try:
        result = run_dream(lm, target, cfg, run_dir, fluency=fluency, resume=args.resume,
                           checkpoint_every=args.checkpoint_every, make_tracker=tracker,
                           frontier_ref=args.frontier_ref, progress=not args.no_progress,
                           lock=lock)
    except OSError as e:
        if (full := os_error(e, DISK_FULL)) is None:
            raise
        raise UserError(_disk_full_line(full, run_dir, args)) from None
    if not result.complete:
        print(f"interrupted after {len(result.history)} iterations; saved to {run_dir}\n"
              f"resume with: {_command(args, resume=True)}", file=sys.stderr)
        return 130
    print(result.frontier.table())
    if cfg.prefix or cfg.suffix:
        print(f"\n(texts are the optimized tokens; the model read them as "
              f"{cfg.prefix!r} + text + {cfg.suffix!r})")
    print(f"\n{len(result.frontier)} frontier points from {len(result.history)} iterations; "
          f"run saved to {run_dir}")
    _print_wandb(run_dir)
    print(f"see it on a page: {report_command(run_dir)}")
    return 0


def _resume_settings(args: argparse.Namespace, run_dir: Path) -> EPOConfig:
    """--resume needs a run to resume; without --iters it runs to the saved run's length,
    without --dtype in the saved run's dtype, and without --preset from the saved run's preset
    (runs made before presets existed: paper)."""
    from ..runs import CHECKPOINT, read_json

    saved = run_dir / "config.json"
    if not saved.exists() and not (run_dir / CHECKPOINT).exists():
        raise UserError(f"--resume: {run_dir} holds no run (no config.json), so there is "
                        "nothing to resume; drop --resume to start a new run")
    if not (run_dir / CHECKPOINT).exists():
        print(f"note: {run_dir} stopped before its first checkpoint; starting it from "
              "iteration 0", file=sys.stderr)
    config = read_json(saved) if saved.exists() else {}
    cfg = config_from_args(args, (config.get("extra") or {}).get("preset", "paper"))
    if config:
        if args.iters is None:
            cfg = cfg.replace(iters=config.get("iters", cfg.iters))
        if args.dtype is None:           # the dtype the run was made in, not today's "auto"
            cfg = cfg.replace(dtype=config.get("dtype"))
    return cfg


def _command(args: argparse.Namespace, resume: bool) -> str:
    """The command line the user ran, with or without --resume."""
    argv = [a for a in args.argv if a != "--resume"] + (["--resume"] if resume else [])
    return shlex.join(["fluentdream", *argv])


def _disk_full_line(e: OSError, run_dir: Path, args: argparse.Namespace) -> str:
    from ..runs import CHECKPOINT

    where = f" writing {e.filename}" if e.filename else ""
    if (run_dir / CHECKPOINT).exists():
        return (f"the disk is full{where}; {run_dir / CHECKPOINT} keeps the run up to its last "
                f"checkpoint; free space, then resume with: {_command(args, resume=True)}")
    return (f"the disk is full{where}; the run stopped before its first checkpoint, so nothing "
            f"was kept; free space, then run again: {_command(args, resume=False)}")


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="mirror the run to W&B; auto = online if logged in, else offline "
                   "(upload later with `wandb sync`); WANDB_MODE, if set, decides auto [default: auto]")
    p.add_argument("--wandb-project", default="fluentdream", help="W&B project [default: fluentdream]")
    p.add_argument("--wandb-group", default=None, help="W&B group (sweeps: the --out directory's name)")
    p.add_argument("--frontier-ref", type=_frontier_ref, default=(6.0, 0.0), metavar="CE,TARGET",
                   help="reference point of the frontier quality (hypervolume): CE upper limit and "
                   "target lower limit [default: 6,0]")


def _frontier_ref(text: str) -> tuple[float, float]:
    try:
        ce, target = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CE,TARGET such as 6,0; got {text!r}") from None
    return ce, target


def _print_wandb(run_dir: Path) -> None:
    from ..runs import read_json
    prov = read_json(run_dir / "provenance.json")
    if prov.get("wandb_mode") == "offline":
        print(f"W&B offline run {prov['wandb_run_id']}; upload with: "
              f"wandb sync {run_dir}/wandb/offline-run-*-{prov['wandb_run_id']}")
    elif prov.get("wandb_run_id"):
        print(f"W&B run {prov['wandb_run_id']}")


def _records_table(records: list[dict], runs: list[str] | None = None, max_width: int = 60) -> str:
    """Frontier records (frontier.json) as a plain-text table, optionally with their run; a
    post column when the records have post-activation values (pre-activation targets)."""
    post = any("post" in r for r in records)
    head = (f"{'activation':>10}  " + (f"{'post':>8}  " if post else "")
            + f"{'xentropy':>8}  {'perplexity':>10}  " + ("run  " if runs else ""))
    lines = [head + "text"]
    for i, r in enumerate(records):
        shown = repr(r["text"])[1:-1]
        shown = shown if len(shown) <= max_width else shown[:max_width - 1] + "…"
        run = f"{runs[i]}  " if runs else ""
        value = f"{r['post']:8.3f}  " if post else ""
        lines.append(f"{r['target']:10.3f}  {value}{r['xentropy']:8.3f}  {r['perplexity']:10.1f}  "
                     f"{run}{shown}")
    return "\n".join(lines)


def _add_run_commands(sub) -> None:
    """The `frontier` and `sweep` subcommands (DESIGN §7)."""
    p = sub.add_parser("frontier", help="merge finished runs into one Pareto frontier table")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (same model, "
                   "fluency model, target and prompt length)")
    p.add_argument("--json", action="store_true", help="print the merged frontier as JSON records")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("sweep", help="dream for every target x seed (in-process or on Ray); "
                       "finished runs are skipped, so re-running finishes a sweep")
    p.add_argument("--model", required=True, help="'embedded', a local HF directory or a hub name")
    p.add_argument("--targets", required=True, help="comma-separated target specs, e.g. L1.N5,L1.N6")
    p.add_argument("--seeds", default="0", help="seeds: 0-3 or 0,5,7 [default: 0]")
    p.add_argument("--out", required=True, help="directory holding one run directory per job")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: in this process, --batch jobs at a time; ray: a Ray cluster")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="local executor: N jobs in lockstep, one forward pass scoring all their "
                   "children, each with its own run directory (1: one after another) [default: 8]")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (e.g. auto or "
                   "ray://host:10001); default: start a local Ray instance")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each holding one model copy")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray actor reserves")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save each run's history every N >= 1 iterations [default: "
                   "restart_frequency]")
    _add_tracking_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=cmd_sweep)


def cmd_frontier(args: argparse.Namespace) -> int:
    """Merge the saved runs; runs that other processes are writing are listed as running and
    left out (never read half-way), and the others are held against writers while read."""
    from ..runs.lock import reading
    from ..runs import merged_frontier

    dirs = [Path(d) for d in args.run_dirs]
    with reading(dirs) as running:
        for d, owner in running.items():
            print(f"running: {d} (being written by {owner}); left out until it is saved",
                  file=sys.stderr)
        saved = [d for d in dirs if d not in running]
        if not saved:
            raise UserError(f"every run given is still running (e.g. {dirs[0]}, being written "
                            f"by {running[dirs[0]]}); wait until one is saved")
        records, runs = merged_frontier(saved)
    if args.json:
        print(json.dumps([dict(r, run=run) for r, run in zip(records, runs)], indent=2))
    else:
        print(_records_table(records, runs))
        left_out = f" ({len(running)} running, left out)" if running else ""
        print(f"\n{len(records)} frontier points from {len(saved)} runs{left_out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..files import writable_dir
    from ..models.hardware import check_device
    from ..runs.distributed import make_jobs, parse_seeds, run_jobs

    if args.seed is not None:
        raise UserError("sweep takes --seeds (e.g. 0-3), not --seed")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise UserError("--targets is empty; give e.g. L1.N5,L1.N6")
    jobs = make_jobs(targets, parse_seeds(args.seeds))
    cfg = config_from_args(args)
    check_device(cfg.device)
    cfg = _resolve_dtype(cfg)
    out = writable_dir(Path(args.out))
    results = run_jobs(args.model, jobs, out, cfg, executor=args.executor,
                       ray_address=args.ray_address, workers=args.workers,
                       gpus_per_worker=args.gpus_per_worker, wandb=args.wandb,
                       project=args.wandb_project, group=args.wandb_group,
                       checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                       batch=args.batch, command=_command(args, resume=False))
    for r in results:
        what = r.error if r.error else f"best target {r.summary['best_target']:.3f}"
        print(f"{r.status:8}  {r.run_dir}  {what}" + (f"; by {r.taken_by}" if r.taken_by else ""))
    failed = sum(r.status == "failed" for r in results)
    taken = sum(r.status == "taken" for r in results)
    print(f"\n{len(results) - failed} of {len(results)} jobs complete in {out}"
          + (f"; {taken} computed by other processes" if taken else "")
          + (f"; {failed} failed (see error.json in their run directories)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)   # for "resume with: ..." hints
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"fluentdream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted below into the user's faults and our bugs
        line = user_fault(e)
        if line is None or args.verbose:
            traceback.print_exc()
        if line is None:
            print(f"fluentdream {args.command}: internal error ({type(e).__name__}); this is a "
                  f"bug in fluentdream, not in your input: please report it to {ISSUE_TRACKER}",
                  file=sys.stderr)
            return 1
        print(f"fluentdream {args.command}: error: {line}", file=sys.stderr)
        return 2

