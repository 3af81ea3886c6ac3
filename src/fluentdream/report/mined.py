"""A mine's dataset examples on a target page: the rows of `fluentdream mine` (or an
experiment's mining/ folder) for the page's feature, each window shaded token by token.

    mines = read_mines([Path("results/embedded")])     # mine folders, or folders holding them
    found = examples_for(mines, "embedded", "L1.N660:pre")    # (mine, rows) of L1.N660, or None
    own, per_token = token_values(lm, target, windows)         # (N,), (N, w): at each token

Mining records each example's window alone (data.mining: the `window`-token prompt ending at its
max token), its activation there and its CE, so it sits on the dreams' axes. A page scores the
window with its own target at every position: the value had the prompt ended at that token (the
models are causal), whose last entry is the mined `window_activation` for the feature itself and
the pre-activation for a `:pre` page, whose dreams optimize that.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.scoring.hooks import capture
from ..errors import UserError
from ..runs import read_json
from ..targets.kinds import Target

COLUMNS = ("target", "rank", "activation", "doc_id", "position", "window_ids", "window_text",
           "window_activation", "window_xentropy")


@dataclass
class Mine:
    dir: Path
    summary: dict
    examples: pd.DataFrame

    def label(self) -> str:
        s = self.summary
        tokens = s.get("tokens_scanned")
        return (f"{self.dir} ({s.get('dataset', '?')}, "
                + (f"{tokens:,} tokens" if isinstance(tokens, int) else "? tokens") + ")")


def read_mines(paths: list[Path]) -> list[Mine]:
    """The mines among `paths` and under them, in order (sorted within a folder): each mine
    folder's summary.json and examples.parquet. A path that does not exist or holds no mine,
    and a damaged or unfinished mine given by name, are the user's error, named."""
    out: list[Mine] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"--mine {path}: no such directory; give a folder written by "
                            "`fluentdream mine` (examples.parquet and summary.json) or one "
                            "holding such folders")
        if (path / "examples.parquet").exists() or (path / "summary.json").exists():
            out.append(_read(path))
            continue
        found = sorted(p.parent for p in path.rglob("examples.parquet")
                       if (p.parent / "summary.json").exists())
        if not found:
            raise UserError(f"--mine {path}: holds no mine (a folder with examples.parquet and "
                            "summary.json, written by `fluentdream mine`)")
        out += [_read(d) for d in found]
    return out


def _read(d: Path) -> Mine:
    if not (d / "summary.json").exists():
        raise UserError(f"--mine {d}: no summary.json, so not a finished mine (it is written "
                        "last); finish or rerun `fluentdream mine`")
    summary = read_json(d / "summary.json")
    try:
        examples = pd.read_parquet(d / "examples.parquet")
    except (OSError, ValueError) as e:     # missing file, or not parquet (pyarrow's errors)
        raise UserError(f"--mine {d}: examples.parquet is missing or damaged ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    lacking = [c for c in COLUMNS if c not in examples.columns]
    if lacking:
        raise UserError(f"--mine {d}: examples.parquet lacks {', '.join(lacking)}; made by "
                        "another version? rerun `fluentdream mine`")
    return Mine(d, summary, examples)


def post_name(target: str) -> str:
    """The name mining gives a feature: a `:pre` target's post-activation twin (mining ranks
    post-activation values)."""
    return target.replace(":pre", "", 1)


def examples_for(mines: list[Mine], model: str, target: str) -> tuple[Mine, pd.DataFrame] | None:
    """The first mine of `model` holding the feature, and its rows by rank; None when none
    does."""
    name = post_name(target)
    for mine in mines:
        if mine.summary.get("model") != model:
            continue
        rows = mine.examples[mine.examples["target"] == name]
        if len(rows):
            return mine, rows.sort_values("rank").reset_index(drop=True)
    return None


@torch.no_grad()
def token_values(lm, target: Target, windows: np.ndarray,
                 batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, w) token windows -> the target's value on each window (N,) and its value read at
    every position (N, w), from one forward pass per batch. Every built-in target kind reads a
    chosen position, so the same target at position p gives the latter."""
    at = [replace(target, position=p) for p in range(windows.shape[1])]
    own = np.empty(len(windows))
    per_token = np.empty(windows.shape)
    for a in range(0, len(windows), batch):
        ids = torch.as_tensor(windows[a:a + batch], dtype=torch.long, device=lm.device)
        with capture(lm, target.sites) as acts:
            logits = lm.model(input_ids=ids, use_cache=False).logits
            own[a:a + len(ids)] = target.value(acts, logits).float().cpu().numpy()
            per_token[a:a + len(ids)] = torch.stack([t.value(acts, logits) for t in at], dim=1) \
                .float().cpu().numpy()
    return own, per_token
