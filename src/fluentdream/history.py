"""History: every candidate of every EPO iteration, plus the state needed to resume (DESIGN §4.8).

    hist = fd.epo(lm, tgt, cfg)
    hist.ids.shape            # (T, P, n): pool of each iteration, P = M + M*r (parents first)
    hist.target, hist.xentropy  # (T, P) float32; rejected candidates are -inf / nan
    hist.kept                 # (T, M) pool index held by each slot after the iteration
    hist.restart_lambda       # (T,) lambda_r where a restart happened, else nan
    hist.save("run/history.npz"); fd.History.load("run/history.npz")

Pool layout of iteration t: rows 0..M-1 are the slots' prompts entering t, then r children of
slot 0, r children of slot 1, ... Saved as compressed .npz with a schema version; writes are
atomic (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class EPOState:
    """What the loop needs to continue exactly where it stopped."""
    iteration: int            # next iteration to run
    slot_ids: np.ndarray      # (M, n) int64
    slot_target: np.ndarray   # (M,) float32
    slot_xentropy: np.ndarray # (M,) float32
    topk: np.ndarray          # (M, n, k) int32 candidate tokens from each slot's last gradient
    fresh: np.ndarray         # (M,) bool: topk is valid for the slot's current prompt
    rng_state: np.ndarray     # (S,) uint8 torch.Generator state


@dataclass
class History:
    lambdas: np.ndarray                                   # (M,)
    ids: list[np.ndarray] = field(default_factory=list)  # T x (P, n) int32
    target: list[np.ndarray] = field(default_factory=list)     # T x (P,) float32
    xentropy: list[np.ndarray] = field(default_factory=list)   # T x (P,) float32
    kept: list[np.ndarray] = field(default_factory=list)       # T x (M,) int32
    restart_lambda: list[float] = field(default_factory=list)  # T, nan = no restart
    seconds: list[float] = field(default_factory=list)         # T wall seconds
    n_scored: list[int] = field(default_factory=list)          # T model-scored candidates
    meta: dict = field(default_factory=dict)   # config, target and model names, notes
    state: EPOState | None = None

    def append(self, ids, target, xentropy, kept, restart_lambda, seconds, n_scored) -> None:
        self.ids.append(np.asarray(ids, dtype=np.int32))
        self.target.append(np.asarray(target, dtype=np.float32))
        self.xentropy.append(np.asarray(xentropy, dtype=np.float32))
        self.kept.append(np.asarray(kept, dtype=np.int32))
        self.restart_lambda.append(float(restart_lambda))
        self.seconds.append(float(seconds))
        self.n_scored.append(int(n_scored))

    def trim(self, n_iters: int) -> None:
        """Drop iterations from n_iters on (in place)."""
        for name in ("ids", "target", "xentropy", "kept", "restart_lambda", "seconds", "n_scored"):
            del getattr(self, name)[n_iters:]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_iters(self) -> int:
        return len(self.ids)

    def arrays(self) -> dict[str, np.ndarray]:
        """Stacked arrays: ids (T, P, n), target/xentropy (T, P), kept (T, M), ... (T,)."""
        T = len(self)
        return dict(
            lambdas=np.asarray(self.lambdas, dtype=np.float64),
            ids=np.stack(self.ids) if T else np.zeros((0, 0, 0), np.int32),
            target=np.stack(self.target) if T else np.zeros((0, 0), np.float32),
            xentropy=np.stack(self.xentropy) if T else np.zeros((0, 0), np.float32),
            kept=np.stack(self.kept) if T else np.zeros((0, 0), np.int32),
            restart_lambda=np.asarray(self.restart_lambda, dtype=np.float64),
            seconds=np.asarray(self.seconds, dtype=np.float64),
            n_scored=np.asarray(self.n_scored, dtype=np.int64),
        )

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All finite candidates, flattened: ids (N, n), target (N,), xentropy (N,)."""
        a = self.arrays()
        ids = a["ids"].reshape(-1, a["ids"].shape[-1]) if len(self) else np.zeros((0, 0), np.int32)
        f, ce = a["target"].reshape(-1), a["xentropy"].reshape(-1)
        ok = np.isfinite(f) & np.isfinite(ce)
        return ids[ok], f[ok], ce[ok]

    def slot_scores(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(M,), (M,): target and CE held by each slot after iteration t."""
        k = self.kept[t]
        return self.target[t][k], self.xentropy[t][k]

    def best_target(self) -> float:
        _, f, _ = self.candidates()
        return float(f.max()) if len(f) else float("-inf")

    def truncated(self, n_iters: int) -> "History":
        """The first n_iters iterations (for frontier growth over time, paper Fig 2b)."""
        h = History(self.lambdas, meta=dict(self.meta))
        for name in ("ids", "target", "xentropy", "kept", "restart_lambda", "seconds", "n_scored"):
            setattr(h, name, list(getattr(self, name)[:n_iters]))
        return h

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        arrays = self.arrays()
        arrays["schema_version"] = np.array(SCHEMA_VERSION)
        arrays["meta_json"] = np.array(json.dumps(self.meta, default=str))
        if self.state is not None:
            for f in fields(EPOState):
                arrays[f"state_{f.name}"] = np.asarray(getattr(self.state, f.name))
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        with np.load(path, allow_pickle=False) as z:
            version = int(z["schema_version"])
            if version != SCHEMA_VERSION:
                raise ValueError(f"{path}: history schema {version}, this version reads {SCHEMA_VERSION}")
            h = cls(lambdas=z["lambdas"], meta=json.loads(str(z["meta_json"])))
            for t in range(len(z["seconds"])):
                h.append(z["ids"][t], z["target"][t], z["xentropy"][t], z["kept"][t],
                         z["restart_lambda"][t], z["seconds"][t], z["n_scored"][t])
            if "state_iteration" in z:
                h.state = EPOState(**{f.name: z[f"state_{f.name}"] for f in fields(EPOState)})
                h.state.iteration = int(h.state.iteration)
        return h


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(binary file handle) on a temporary file beside `path`, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
