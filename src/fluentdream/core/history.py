"""History: every candidate of every EPO iteration, plus the state needed to resume (DESIGN §4.8).

    hist = fd.epo(lm, tgt, cfg)
    hist.ids.shape            # (T, P, W): pool of each iteration, P = M + M*r (parents first)
    hist.lengths              # (T, P) tokens of each prompt (ids are -1 after them)
    hist.target, hist.xentropy  # (T, P) float32 as the search scored them; rejected: -inf / nan
    hist.valid                # (T, P) bool: candidates the run may report (retokenizing ones)
    hist.kept                 # (T, M) pool index held by each slot after the iteration
    hist.restart_lambda       # (T,) lambda_r where a restart happened, else nan
    hist.seconds             # (T,) wall seconds
    hist.n_scored, hist.n_memo  # (T,) children the model scored; children looked up instead
    hist.save("run/history.npz"); fd.History.load("run/history.npz")

Pool layout of iteration t: rows 0..M-1 are the slots' prompts entering t, then r children of
slot 0, r children of slot 1, ... Saved as compressed .npz with a schema version; writes are
atomic (temporary file + rename).

Schema 3 adds n_memo, the children answered from the scorer's memo (scored before, or repeats);
n_scored counts only what the model computed. In schemas 1 and 2 n_scored counted every child
(memo hits and rejected ones too), and n_memo loads as -1 (not recorded). It also adds `valid`
(T, P): the candidates a run may report. target and xentropy hold what the search scored; runs
made between a898f3e and the restored rejection (LOG.md, 2026-12-07) passed through prompts
that do not retokenize, and `valid` is False for those; it is False for rejected ones (-inf /
nan) always. Earlier schemas load with valid = finite scores (their search rejected outright).

Schema 2 (issue 14) holds prompts of several lengths: ids is (T, P, W) with W = the run's max_len,
each prompt's tokens first and -1 after them (fluentdream.core.ragged; a fixed-length run has no -1,
W = n), and the loop state adds the insertion candidates next_ids/next_probs. Schema 1 files
(fixed length, no insertion state) load as they are.

The per-iteration arrays live in buffers that double when full, so `append` is amortized O(1)
and every attribute above is a read-only view of the first T rows (no copy, no restacking).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write

SCHEMA_VERSION = 3
READS = (1, 2, 3)            # schema versions load() accepts

# Per-iteration arrays, in save order, with the dtype each row is stored in.
COLUMNS = dict(ids=np.int32, target=np.float32, xentropy=np.float32, valid=np.bool_,
               kept=np.int32, restart_lambda=np.float64, seconds=np.float64, n_scored=np.int64,
               n_memo=np.int64)
# Row shapes of an empty History, so its arrays have the documented number of axes.
_EMPTY_ROW = dict(ids=(0, 0), target=(0,), xentropy=(0,), valid=(0,), kept=(0,))


@dataclass
class EPOState:
    """What the loop needs to continue exactly where it stopped."""
    iteration: int            # next iteration to run
    slot_ids: np.ndarray      # (M, W) int64, -1 after a prompt's tokens
    slot_target: np.ndarray   # (M,) float32
    slot_xentropy: np.ndarray # (M,) float32
    topk: np.ndarray          # (M, W, k) int32 candidate tokens from each slot's last gradient
    fresh: np.ndarray         # (M,) bool: topk (and next_*) valid for the slot's current prompt
    rng_state: np.ndarray     # (S,) uint8 torch.Generator state
    # (M, W + 1, k) insertion candidates at each position and their probabilities
    # (fluentdream.core.operators.insertion_table); (0, 0, 0) when the run does not insert.
    next_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.int32))
    next_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))


class History:
    """Every pool of an EPO run: ids (T, P, W) (-1 after each prompt), target and xentropy
    (T, P), kept (T, M), restart_lambda, seconds, n_scored and n_memo (T,); `lambdas` (M,) the slots'
    penalties, `meta` the config and names, `state` the loop state to resume from (or None)."""

    def __init__(self, lambdas: np.ndarray, meta: dict | None = None,
                 state: EPOState | None = None):
        self.lambdas = lambdas
        self.meta = {} if meta is None else meta
        self.state = state
        self._rows: dict[str, np.ndarray] | None = None   # name -> (capacity, ...) buffer
        self._n = 0

    def append(self, ids, target, xentropy, kept, restart_lambda, seconds, n_scored,
               n_memo=-1, valid=None) -> None:
        """Add one iteration: ids (P, W), target and xentropy (P,), kept (M,), four scalars
        (n_memo -1: not recorded), valid (P,) (None: the finite scores)."""
        if valid is None:
            valid = np.isfinite(target) & np.isfinite(xentropy)
        row = dict(ids=ids, target=target, xentropy=xentropy, valid=valid, kept=kept,
                   restart_lambda=restart_lambda, seconds=seconds, n_scored=n_scored,
                   n_memo=n_memo)
        row = {k: np.asarray(v, dtype=COLUMNS[k]) for k, v in row.items()}
        if self._rows is None:
            self._rows = {k: np.empty((16,) + v.shape, v.dtype) for k, v in row.items()}
        for k, v in row.items():
            if v.shape != self._rows[k].shape[1:]:
                raise ValueError(f"History.append: {k} has shape {v.shape}, earlier iterations "
                                 f"{self._rows[k].shape[1:]}; every iteration needs the same pool")
        if self._n == len(self._rows["ids"]):
            self._rows = {k: _grown(b, self._n) for k, b in self._rows.items()}
        for k, v in row.items():
            self._rows[k][self._n] = v
        self._n += 1     # last, so an interrupt above leaves the History as it was

    def trim(self, n_iters: int) -> None:
        """Drop iterations from n_iters on (in place). Copies, so views handed out earlier
        keep their values when later appends reuse the rows."""
        if n_iters < self._n:
            self._n = max(n_iters, 0)
            self._rows = ({k: b[:self._n].copy() for k, b in self._rows.items()} if self._n
                          else None)

    def _column(self, name: str) -> np.ndarray:
        if self._rows is None:
            return np.zeros((0,) + _EMPTY_ROW.get(name, ()), COLUMNS[name])
        view = self._rows[name][:self._n]
        view.flags.writeable = False     # the History owns its rows; edit a copy
        return view

    ids = property(lambda self: self._column("ids"),
                   doc="(T, P, W) int32 pool tokens, -1 after each prompt")
    target = property(lambda self: self._column("target"),
                      doc="(T, P) float32 as the search scored it; -inf banned")
    xentropy = property(lambda self: self._column("xentropy"),
                        doc="(T, P) float32 as the search scored it; nan banned")
    valid = property(lambda self: self._column("valid"),
                     doc="(T, P) bool: candidates the run may report (History.candidates)")
    kept = property(lambda self: self._column("kept"), doc="(T, M) int32 pool index of each slot")
    restart_lambda = property(lambda self: self._column("restart_lambda"),
                              doc="(T,) float64 lambda_r at restarts, else nan")
    seconds = property(lambda self: self._column("seconds"), doc="(T,) float64 wall seconds")
    n_scored = property(lambda self: self._column("n_scored"),
                        doc="(T,) int64 children the model scored")
    n_memo = property(lambda self: self._column("n_memo"),
                      doc="(T,) int64 children looked up in the scorer's memo; -1 not recorded")

    def __len__(self) -> int:
        return self._n

    @property
    def n_iters(self) -> int:
        return self._n

    @property
    def lengths(self) -> np.ndarray:
        """(T, P) int64 tokens of each pool member."""
        return (self.ids >= 0).sum(-1)

    def __repr__(self) -> str:
        T, P, n = self.ids.shape
        return (f"History(T={T}, M={len(self.lambdas)}, P={P}, n={n}, "
                f"target={self.meta.get('target')!r}, best={self.best_target():.4g})")

    def arrays(self) -> dict[str, np.ndarray]:
        """lambdas (M,) and the per-iteration arrays: ids (T, P, W), target/xentropy/valid
        (T, P), kept (T, M), restart_lambda/seconds/n_scored/n_memo (T,)."""
        return dict(lambdas=np.asarray(self.lambdas, dtype=np.float64),
                    **{k: self._column(k) for k in COLUMNS})

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All valid candidates (what a run reports), flattened: ids (N, W) (-1 after a
        prompt), target (N,), xentropy (N,)."""
        T, P, n = self.ids.shape
        ids = self.ids.reshape(T * P, n)
        f, ce = self.target.reshape(-1), self.xentropy.reshape(-1)
        ok = self.valid.reshape(-1)
        return ids[ok], f[ok], ce[ok]

    def slot_scores(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(M,), (M,): target and CE held by each slot after iteration t."""
        k = self.kept[t]
        return self.target[t][k], self.xentropy[t][k]

    def best_target(self) -> float:
        _, f, _ = self.candidates()
        return float(f.max()) if len(f) else float("-inf")

    def truncated(self, n_iters: int) -> "History":
        """The first n_iters iterations, copied (for frontier growth over time, paper Fig 2b)."""
        return History._from_arrays(self.lambdas, dict(self.meta),
                                    {k: self._column(k)[:n_iters] for k in COLUMNS})

    @classmethod
    def _from_arrays(cls, lambdas, meta: dict, columns: dict[str, np.ndarray]) -> "History":
        """A History holding copies of per-iteration arrays that share their first axis T."""
        h = cls(lambdas, meta)
        h._n = len(columns["seconds"])
        if h._n:
            h._rows = {k: np.array(columns[k], dtype=COLUMNS[k]) for k in COLUMNS}
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
        # Every z[key] decompresses that whole member, so each is read exactly once.
        with np.load(path, allow_pickle=False) as z:
            version = int(z["schema_version"])
            if version not in READS:
                raise UserError(f"{path}: history schema {version}, this version reads "
                                f"{', '.join(map(str, READS))}")
            columns = {k: z[k] for k in COLUMNS if k in z}
            if "n_memo" not in columns:                        # schemas 1 and 2
                columns["n_memo"] = np.full(len(columns["seconds"]), -1, np.int64)
            if "valid" not in columns:                         # ... whose search rejected
                columns["valid"] = np.isfinite(columns["target"]) & np.isfinite(columns["xentropy"])
            if len({len(a) for a in columns.values()}) != 1:
                raise UserError(f"{path}: the history's arrays disagree on the number of "
                                f"iterations ({ {k: len(a) for k, a in columns.items()} })")
            h = cls._from_arrays(z["lambdas"], json.loads(str(z["meta_json"])), columns)
            if "state_iteration" in z:     # schema 1 has no next_* (the defaults)
                h.state = EPOState(**{f.name: z[f"state_{f.name}"] for f in fields(EPOState)
                                      if f"state_{f.name}" in z})
                h.state.iteration = int(h.state.iteration)
        return h


def _grown(buffer: np.ndarray, n: int) -> np.ndarray:
    """(C, ...) -> (2C, ...) buffer holding the first n rows."""
    out = np.empty((2 * len(buffer),) + buffer.shape[1:], buffer.dtype)
    out[:n] = buffer[:n]
    return out
