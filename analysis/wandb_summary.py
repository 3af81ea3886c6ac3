"""Each experiment's summary to W&B: its tables, figures and numbers in one run of its group
(DESIGN §7, issue 17), so a synced dashboard shows the experiment without the local files.

    python -m analysis.wandb_summary --preset embedded --tables results/embedded/tables \
        --figures paper_figures/out          # make figures runs it after the figures
    wandb sync results/embedded/wandb/offline-run-*        # later, to see them on wandb.ai

A pure function of saved results (like the figures): the tables (analysis/build_tables.py), the
figures (paper_figures/) and numbers.json (analysis/numbers.py). One W&B run per experiment, in
project `fluentdream`, group `<preset>-<experiment>` (the group its dream runs use when they are
tracked, experiments/0N_*.py), named `<preset>-<experiment>-summary`, holding
  tables/<name>    a wandb.Table per table of the experiment (NaN as null)
  figures/<stem>   a wandb.Image per .png figure; html/<stem> a wandb.Html per .html page
                   (dots in the stem as underscores: W&B flattens nested keys with dots)
  html/<model>__<target>  the report page (results/<preset>/report, `make figures`) of each target
                   whose runs the experiment made: its frontier, prompts, dataset examples and
                   progress on one page, drawn by its own inline script
  tables/frontier_<run>  each dream's Pareto frontier (the run's frontier.json: prompt, target,
                   post value of a pre-activation target, CE, perplexity, lambda), so every dream's
                   frontier is on the dashboard even when its own run was not tracked
  tables/numbers   its numbers.json entries, one row each (key, label, value, CI, test, p, n)
  summary          numbers/<key> = {value, ci_low, ci_high, test, p, n} for the same entries,
                   the key's dots as slashes ("numbers/seeds/max/median")
  config           preset, experiment, the git SHA of numbers.json, the W&B ids of its dream runs
Which table and figure belongs to which experiment is the table OUTPUTS below: tables by name,
figures by file-name pattern. Besides those, a table with an `experiment` column (runs,
frontier_points, dream_fluency) gives each experiment its own rows, and a table with a `role`
column (dataset_*) gives each experiment the rows of its roles (analysis/dataset.ROLES). A
numbers.json entry goes to every experiment its provenance names ("05_...+04_..." to both).
Markdown tables (table*.md) are not logged: they render CSVs that are logged as wandb.Table.
Outputs that belong to no experiment are listed when the step ends, so a new figure is not
silently left out.

W&B mode: --wandb auto (online when logged in, else offline; WANDB_MODE wins; the Makefile
exports WANDB_MODE=offline). Files go under --dir/wandb (default $WANDB_DIR, else
results/<preset>). W&B failing never fails the step (tracking.py's rule): one warning line,
no further runs, exit 0; the tables and figures on disk are the results.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fluentdream.files import writable_dir
from fluentdream.errors import UserError
from fluentdream.report import read_page
from fluentdream.runs.lock import other_writer
from fluentdream.runs.tracking import MODES, resolve_mode, start_tracker

from .dataset import ROLES

# experiment -> (its tables by name, its figures by file-name pattern in the figures folder)
OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "01_fluency_calibration": (("fluency_calibration", "thresholds"),
                               ("fig5a_fluency_calibration.png",)),
    "02_token_logits": (("table2_token_logits",), ("frontier_logit_*.png",)),
    "03_six_neurons": (("table3_six_neurons", "attribution_03"),
                       ("fig1_attribution.*", "frontier_L*.png")),
    "04_seed_variance": (("seed_variance", "seed_summary", "frontier_growth", "restart_growth"),
                         ("fig2_seed_variance.png", "fig_distributions.png")),
    "05_dream_vs_dataset": (("dataset_summary", "dataset_runs", "dataset_frontiers",
                             "dataset_bins", "dataset_examples", "dataset_sampled",
                             "dataset_neuron_stats"),
                            ("fig3_dream_vs_dataset.png", "fig_distributions.png")),
    "06_polysemantic_neuron": (("dataset_summary", "dataset_runs", "dataset_frontiers",
                                "dataset_bins", "dataset_examples", "dataset_attribution"),
                               ("fig4_polysemantic.*",)),
    "07_residual_directions": (("residual_directions", "residual_summary", "residual_slack",
                                "residual_slack_runs"),
                               ("fig5_residual_alignment.png", "fig6_residual_layers.png",
                                "fig_distributions.png")),
    "09_operators_and_restarts": (("operators_runs", "operators_summary", "operators_tests"),
                                  ("fig8_operators.png",)),
    "10_sae_latents": (("sae_latents", "sae_families"), ("fig7_sae_latents.png",)),
}
MEDIA = (".png", ".html")
NUMBERS_TABLE = "numbers"   # build_tables' flat copy of numbers.json; logged from numbers.json


@dataclass
class Summary:
    """What one experiment's W&B run receives."""
    experiment: str
    config: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    numbers: dict[str, dict] = field(default_factory=dict)     # numbers.json key -> entry

    def summary(self) -> dict:
        """The run summary: numbers/<key, dots as slashes> -> {value, ci_low, ci_high, test, p,
        n} (W&B flattens nested keys with dots; tables/numbers keeps the exact key)."""
        return {f"numbers/{key.replace('.', '/')}": _number_row(e, with_label=False)
                for key, e in self.numbers.items()}


def _number_row(e: dict, with_label: bool) -> dict:
    ci, test = e.get("ci") or (None, None), e.get("test") or {}
    row = dict(value=e.get("value"), ci_low=ci[0], ci_high=ci[1], test=test.get("name"),
               p=test.get("p"), n=e.get("n"))
    return dict(label=e.get("label"), **row, runs=e.get("runs")) if with_label else row


def read_inputs(tables_dir: Path, figures_dir: Path, numbers_path: Path
                ) -> tuple[dict[str, pd.DataFrame], list[Path], dict]:
    """The tables (name -> DataFrame), the figure files and numbers.json ({} when absent)."""
    for what, folder in (("tables", tables_dir), ("figures", figures_dir)):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} does not exist; run `make {what}` first "
                            f"or give --{what} DIR")
    tables = {p.stem: pd.read_csv(p, keep_default_na=False, na_values=[""])
              for p in sorted(tables_dir.glob("*.csv"))}
    figures = sorted(p for p in figures_dir.iterdir() if p.suffix in MEDIA and p.is_file())
    numbers = json.loads(numbers_path.read_text()) if numbers_path.exists() else {}
    return tables, figures, numbers


def _rows_of(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The rows of `df` that belong to `experiment`, by its `experiment` or `role` column."""
    if "experiment" in df.columns:
        df = df[df["experiment"] == experiment]
    if "role" in df.columns:
        df = df[df["role"].map(lambda r: experiment in ROLES.get(r, ((),))[0])]
    return df.reset_index(drop=True)


def dream_frontiers(experiment_dir: Path) -> dict[str, pd.DataFrame]:
    """frontier_<run> -> that dream's frontier.json as a table, for every run saved under
    `experiment_dir` (dots in the run name as underscores: W&B flattens keys with dots)."""
    out = {}
    for path in sorted(experiment_dir.glob("**/frontier.json")):
        if other_writer(path.parent) is not None:   # being rewritten: not final yet
            continue
        points = json.loads(path.read_text())
        df = pd.DataFrame(points).drop(columns=["ids"], errors="ignore")
        first = [c for c in ("text", "target", "post", "xentropy", "perplexity", "lam") if c in df]
        out[f"frontier_{path.parent.name.replace('.', '_')}"] = df[first]
    return out


def report_pages(preset_dir: Path) -> dict[str, list[Path]]:
    """experiment -> the pages of the report under `preset_dir`/report of the targets whose
    runs lie in that experiment's folder ({} when there is no report)."""
    index = preset_dir / "report" / "index.html"
    if not index.exists():
        return {}
    out: dict[str, list[Path]] = {}
    root = preset_dir.resolve()
    for row in read_page(index)["rows"]:
        page = index.parent / row["href"]
        for d in (Path(x).resolve() for x in row["dirs"]):
            if d.is_relative_to(root):
                pages = out.setdefault(d.relative_to(root).parts[0], [])
                if page not in pages:
                    pages.append(page)
    return out


def _experiments_of(entry: dict) -> list[str]:
    return entry.get("provenance", {}).get("experiment", "").split("+")


def plan(preset: str, tables: dict[str, pd.DataFrame], figures: list[Path], numbers: dict,
         preset_dir: Path | None = None) -> list[Summary]:
    """One Summary per experiment with anything to show, in experiment order; with
    `preset_dir`, each experiment's dream frontiers saved under it too."""
    entries = numbers.get("numbers", {})
    names = set(OUTPUTS) | {x for e in entries.values() for x in _experiments_of(e) if x}
    for df in tables.values():
        if "experiment" in df.columns:
            names |= set(df["experiment"].dropna().astype(str))
    pages = report_pages(preset_dir) if preset_dir is not None else {}
    out = []
    for exp in sorted(names):
        listed, patterns = OUTPUTS.get(exp, ((), ()))
        own = {name: _rows_of(df, exp) for name, df in tables.items()
               if name in listed or (name != NUMBERS_TABLE and "experiment" in df.columns)}
        own = {name: df for name, df in own.items() if len(df)}
        if preset_dir is not None:
            own |= dream_frontiers(preset_dir / exp)
        figs = [p for p in figures if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        figs += pages.get(exp, [])
        nums = {k: e for k, e in entries.items() if exp in _experiments_of(e)}
        if not (own or figs or nums):
            continue
        if nums:
            own[NUMBERS_TABLE] = pd.DataFrame([dict(key=k, **_number_row(e, with_label=True))
                                               for k, e in nums.items()])
        runs = own.get("runs", pd.DataFrame(columns=["wandb_run_id"]))["wandb_run_id"]
        config = dict(preset=preset, experiment=exp, numbers_git_sha=numbers.get("git_sha"),
                      dream_wandb_run_ids=sorted(runs.dropna().astype(str).unique()))
        out.append(Summary(exp, config, own, figs, nums))
    return out


def unassigned(tables: dict[str, pd.DataFrame], figures: list[Path]) -> list[str]:
    """Tables and figures that no experiment's run receives."""
    listed = {t for names, _ in OUTPUTS.values() for t in names} | {NUMBERS_TABLE}
    patterns = [pat for _, pats in OUTPUTS.values() for pat in pats]
    return ([f"{name}.csv" for name, df in tables.items()
             if name not in listed and "experiment" not in df.columns]
            + [p.name for p in figures
               if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)])


def log_all(summaries: list[Summary], mode: str, wandb_dir: Path, project: str) -> list[str]:
    """Each Summary to its own W&B run; the experiments logged. The first W&B failure (warned
    by the tracker, one line) ends the step: the next run would most likely fail alike."""
    done = []
    for s in summaries:
        tracker = start_tracker(mode, wandb_dir, s.config, project=project,
                                group=f"{s.config['preset']}-{s.experiment}",
                                name=f"{s.config['preset']}-{s.experiment}-summary")
        if not tracker.log_summary(s.tables, s.figures, s.summary()):
            break
        tracker.finish()
        done.append(s.experiment)
    return done


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="results root")
    p.add_argument("--preset", default="embedded", help="embedded | smollm2 | paper | smoke")
    p.add_argument("--tables", type=Path, help="tables folder [default: RESULTS/PRESET/tables]")
    p.add_argument("--figures", type=Path, default=Path("paper_figures/out"),
                   help="figures folder [default: paper_figures/out]")
    p.add_argument("--wandb", choices=MODES, default="auto",
                   help="auto: online when logged in, else offline (WANDB_MODE wins) "
                        "[default: auto]")
    p.add_argument("--project", default="fluentdream", help="W&B project [default: fluentdream]")
    p.add_argument("--dir", type=Path,
                   help="W&B writes under DIR/wandb [default: $WANDB_DIR, else RESULTS/PRESET]")
    args = p.parse_args(argv)
    preset_dir = args.results / args.preset
    tables, figures, numbers = read_inputs(args.tables or preset_dir / "tables", args.figures,
                                           preset_dir / "numbers.json")
    summaries = plan(args.preset, tables, figures, numbers, preset_dir)
    left = unassigned(tables, figures)
    if left:
        print(f"in no experiment's W&B run (analysis/wandb_summary.OUTPUTS): {', '.join(left)}")
    mode = resolve_mode(args.wandb)
    if mode == "disabled":
        print("W&B disabled: no summary runs logged")
        return []
    wandb_dir = args.dir or Path(os.environ.get("WANDB_DIR") or preset_dir)
    try:
        writable_dir(wandb_dir)   # W&B itself would fall back to /tmp, where nobody looks
    except UserError as e:
        print(f"warning: W&B summary runs not logged: {e}", file=sys.stderr)
        return []
    done = log_all(summaries, mode, wandb_dir, args.project)
    stopped = len(done) < len(summaries)
    print(f"W&B ({mode}): {len(done)} of {len(summaries)} experiments' summary runs in project "
          f"{args.project}, groups {args.preset}-<experiment>, files under {wandb_dir / 'wandb'}"
          + ("; stopped at a W&B failure, the tables and figures on disk are complete" if stopped
             else "")
          + (f"; upload: wandb sync {wandb_dir / 'wandb'}/offline-run-*" if mode == "offline"
             and done else ""))
    return done


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback, exit 2
        print(f"wandb_summary: error: {e}", file=sys.stderr)
        sys.exit(2)
