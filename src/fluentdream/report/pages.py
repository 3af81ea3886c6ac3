"""What each page embeds: a target page's data from its runs, its mine rows and the model, and
the index's one row per target. Plain dicts of JSON values; site.py writes them into pages.

    data = target_page(group, mines, lm, limit, k=32)   # lm None: the model's panels omitted
    row = index_row(data, "targets/embedded__L1.N5.html")

Values: `value` is the target as the runs optimized it. For a `:pre` target the frontier points
also carry `post`, the post-activation value (DESIGN §5). Dataset windows are scored by the
page's own target when the model is loaded, so dreams and examples share one axis; without the
model a `:pre` page compares post values (the mine's and the frontier points').
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..core.context import Context
from ..errors import UserError
from ..provenance import __version__
from ..targets.kinds import parse_target
from .collect import GROUP_KEYS, Group
from .mined import Mine, examples_for, post_name, token_values
from .panels import attributions, distribution, logit_effects, matched, token_texts

PER_RUN = ("seed",)                 # config keys expected to differ between a page's runs
SPARK_POINTS = 60


@dataclass(frozen=True)
class Limit:
    """The in-distribution CE limit pages mark, and where it came from."""
    value: float | None
    source: str


def kind_of(target: str) -> str:
    for prefix, kind in (("logit:", "logit"), ("resid:", "residual direction"),
                         ("attn:", "attention entry"), ("sae:", "SAE latent")):
        if target.startswith(prefix):
            return kind
    return "neuron" if re.match(r"L\d+\.N\d+", target) else "custom"


def target_page(group: Group, mines: list[Mine], lm, limit: Limit, k: int) -> dict:
    """The page's data."""
    cfg, runs = group.config, group.runs
    pre = ":pre" in cfg["target"]
    notes: list[str] = []
    target = _rebuild(cfg["target"], lm, notes)
    axis = "value" if target is not None or not pre else "post"
    ce_limit = float(cfg.get("frontier_ref_xentropy", 6.0))
    varying = _varying(runs)
    in_limit = limit.value if limit.value is not None else ce_limit
    data = dict(page="target", generator=f"fluentdream {__version__}", target=cfg["target"],
                kind=kind_of(cfg["target"]), pre=pre, axis=axis, header=_header(group),
                limits=dict(in_distribution=in_limit, ce_limit=ce_limit, in_distribution_source=(
                    limit.source if limit.value is not None else
                    "the runs' frontier CE limit (give --in-distribution for this model's)")),
                runs=[_run(r, varying) for r in runs],
                frontier=_points(group.merged), notes=notes)
    if target is not None:
        context = Context.of_run(lm, runs[0].dir)
        for point, att in zip(data["frontier"], attributions(lm, target, group.merged, context, k)):
            point["attribution"] = att
        data["logit_effects"] = logit_effects(lm, target)
    dreams = [dict(p, value=p[axis]) for r in data["runs"] for p in r["frontier"]
              if p.get(axis) is not None]
    data["dataset"] = _dataset(mines, cfg, target, lm, dreams, axis, notes)
    data["distribution"] = _distribution(runs, data["dataset"], in_limit, axis, notes)
    data["best_dream"] = _best(dreams, in_limit)
    return data


def _rebuild(name: str, lm, notes: list[str]):
    """The target object (for the panels that need the model), or None with a note."""
    if lm is None:
        notes.append("Attribution, token shading of dataset examples and logit effects need the "
                     "model: this report was made without it (--no-model).")
        return None
    try:
        return parse_target(name, lm)
    except UserError as e:
        notes.append(f"The target could not be rebuilt from its name ({e}), so attribution, "
                     "token shading and logit effects are left out.")
        return None


def _header(group: Group) -> dict:
    cfg, runs = group.config, group.runs
    varying = _varying(runs)
    shared = {k: v for k, v in cfg.items() if k not in PER_RUN and k not in GROUP_KEYS[:3]
              and k not in varying}
    prov = runs[0].provenance
    return dict(model=cfg["model"], model_source=prov.get("model_source"),
                fluency_model=cfg.get("fluency_model"), settings=shared,
                seeds=sorted({r.config["seed"] for r in runs if r.config.get("seed") is not None}),
                git_shas=sorted({f"{r.provenance.get('git_sha') or '?'}"
                                 + ("+dirty" if r.provenance.get("git_dirty") else "")
                                 for r in runs}),
                wandb=sorted({r.provenance["wandb_run_id"] for r in runs
                              if r.provenance.get("wandb_run_id")}))


def _varying(runs) -> set[str]:
    """Config keys whose values differ between the runs (beside the seed)."""
    keys = {k for r in runs for k in r.config} - set(PER_RUN)
    return {k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1}


def _run(run, varying: set[str]) -> dict:
    differs = {k: run.config.get(k) for k in sorted(varying)}
    s, p = run.summary, run.provenance
    return dict(name=run.label, dir=str(run.dir), seed=run.config.get("seed"),
                iterations=s.get("iterations"), seconds=s.get("seconds_total"),
                best=s.get("best_target"), quality=s.get("frontier_quality"),
                git_sha=p.get("git_sha"), git_dirty=p.get("git_dirty"),
                wandb_run_id=p.get("wandb_run_id"), wandb_mode=p.get("wandb_mode"),
                differs=differs, frontier=_points([dict(r, run=run.label) for r in run.frontier]),
                progress=run.progress)


def _points(records: list[dict]) -> list[dict]:
    keys = ("text", "xentropy", "perplexity", "lam", "post", "run", "ids")
    return [dict({k: r[k] for k in keys if k in r}, value=r["target"]) for r in records]


def _dataset(mines, cfg: dict, target, lm, dreams: list[dict], axis: str, notes) -> dict | None:
    found = examples_for(mines, cfg["model"], cfg["target"])
    if found is None:
        notes.append(f"No dataset examples: no --mine of {cfg['model']} holds "
                     f"{post_name(cfg['target'])}" + ("" if mines else " (none was given)") + ".")
        return None
    mine, rows = found
    windows = np.stack([np.asarray(w, dtype=np.int64) for w in rows["window_ids"]])
    own, shade = token_values(lm, target, windows) if target is not None else (None, None)
    examples = []
    for i, r in rows.iterrows():
        post = float(r["window_activation"])
        examples.append(dict(
            rank=int(r["rank"]), text=r["window_text"], xentropy=float(r["window_xentropy"]),
            value=float(own[i]) if own is not None else post, post=post,
            in_context=float(r["activation"]), doc_id=int(r["doc_id"]),
            position=int(r["position"]),
            tokens=token_texts(lm.tokenizer, windows[i]) if lm is not None else None,
            token_values=shade[i].tolist() if shade is not None else None))
    examples.sort(key=lambda e: -e["value"])
    for e, j in zip(examples, matched(dreams, examples)):
        e["dream"] = None if j is None else {k: dreams[j].get(k) for k in
                                             ("text", "value", "post", "xentropy", "run")}
    return dict(source=mine.label(), dataset=mine.summary.get("dataset"), examples=examples,
                tokens_scanned=mine.summary.get("tokens_scanned"), axis=axis)


def _distribution(runs, dataset, in_limit: float, axis: str, notes) -> dict:
    series = {}
    if axis == "value":     # candidates carry the optimized value only
        f = np.concatenate([r.values for r in runs])
        ce = np.concatenate([r.xentropy for r in runs])
        series = {"dream candidates": f, f"dream candidates, CE < {in_limit:.3g}": f[ce < in_limit]}
    else:
        notes.append("The distribution shows the dataset's post values only: the runs record "
                     "their candidates' pre-activation values.")
    if dataset is not None:
        series["dataset windows (top examples, alone)"] = np.array(
            [e["value"] for e in dataset["examples"]])
    return distribution(series)


def _best(points: list[dict], limit: float) -> dict | None:
    ok = [p for p in points if p["xentropy"] < limit and p.get("value") is not None]
    return max(ok, key=lambda p: p["value"], default=None)


def index_row(data: dict, href: str) -> dict:
    """One row of the index: the target, its best in-distribution dream, its best dataset
    example and a sparkline of the runs' best activation over iterations."""
    examples = (data["dataset"] or {}).get("examples") or []
    best_ex = max(examples, key=lambda e: e["value"], default=None)
    dream = data["best_dream"]
    pick = lambda p: p and {k: p.get(k) for k in ("text", "value", "xentropy")}
    return dict(href=href, target=data["target"], model=data["header"]["model"],
                kind=data["kind"], runs=len(data["runs"]), seeds=data["header"]["seeds"],
                dirs=[r["dir"] for r in data["runs"]],
                best_dream=pick(dream), best_example=pick(best_ex),
                beats=None if not (dream and best_ex) else dream["value"] - best_ex["value"],
                spark=_spark([r["progress"] for r in data["runs"]]))


def _spark(progress: list[dict]) -> list[float]:
    """The best activation of any run after each iteration, on at most SPARK_POINTS points."""
    T = max((p["iteration"][-1] for p in progress if p["iteration"]), default=0)
    if not T:
        return []
    grid = np.unique(np.linspace(1, T, min(T, SPARK_POINTS)).round())
    best = np.full(len(grid), -np.inf)
    for p in progress:
        b = np.array([math.nan if v is None else v for v in p["best"]], dtype=np.float64)
        at = np.searchsorted(p["iteration"], grid, side="right") - 1
        vals = np.where(at >= 0, b[np.maximum(at, 0)], -np.inf)
        best = np.fmax(best, np.nan_to_num(vals, nan=-np.inf))
    return [float(v) if np.isfinite(v) else None for v in best]
