"""Fluency tables (paper §3, Fig 5a): slice CE vs length, the CE limits, and how fluent dreams are.

    from analysis import fluency
    tabs = fluency.tables(Path("results/embedded"))
    tabs["fluency_calibration"]   # n, mean, sd, count, paper_mean (Fig 5a, read off the plot)
    tabs["thresholds"]            # one row: mean/sd at n = 12 and every CE limit analog (01)
    tabs["dream_fluency"]         # per run of 02-04: CE range of its frontier, share in distribution

The limits come from experiments/01_fluency_calibration.py (thresholds.json); its docstring states
how the paper's limits (perplexity 100, CE 5, CE 6) are moved to another model.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.data.calibration import load_table
from fluentdream.runs import is_complete, read_json

CALIBRATION = "01_fluency_calibration"
DREAMS = ("02_token_logits", "03_six_neurons", "04_seed_variance")
# Mean CE of n-token Pile slices under Pythia-12B, read off the paper's Fig 5a (PAPER.md).
PAPER_FIG5A = {2: 5.89, 4: 4.95, 8: 4.16, 12: 3.75, 16: 3.50, 24: 3.17, 32: 2.97}
PAPER_SD_12 = 1.1


def load_thresholds(preset_dir: Path) -> dict | None:
    """01's thresholds.json, or None when 01 has not run."""
    path = Path(preset_dir) / CALIBRATION / "thresholds.json"
    return read_json(path) if path.exists() else None


def calibration_table(preset_dir: Path) -> pd.DataFrame:
    path = Path(preset_dir) / CALIBRATION / "fluency.json"
    if not path.exists():
        return pd.DataFrame()
    table = load_table(path)
    return table.assign(paper_mean=table["n"].map(PAPER_FIG5A))


def dream_fluency(preset_dir: Path, limits: dict) -> pd.DataFrame:
    """Per complete run: frontier size, lowest CE, and the share of frontier points with CE under
    the in-distribution limit (mean + 2 SD of 12-token slices)."""
    rows = []
    for exp in DREAMS:
        exp_dir = Path(preset_dir) / exp
        if not exp_dir.is_dir():
            continue
        for d in sorted(p for p in exp_dir.iterdir() if p.is_dir() and is_complete(p)):
            ce = np.array([p["xentropy"] for p in read_json(d / "frontier.json")])
            rows.append(dict(experiment=exp, run=d.name,
                             target=read_json(d / "config.json")["target"],
                             frontier_points=len(ce), min_xentropy=float(ce.min()),
                             max_xentropy=float(ce.max()),
                             in_distribution=float(np.mean(ce < limits["in_distribution"]))))
    return pd.DataFrame(rows)


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    out = {}
    calib = calibration_table(preset_dir)
    if len(calib):
        out["fluency_calibration"] = calib
    limits = load_thresholds(preset_dir)
    if limits is not None:
        out["thresholds"] = pd.DataFrame([limits])
        runs = dream_fluency(preset_dir, limits)
        if len(runs):
            out["dream_fluency"] = runs
    return out
