"""History: every candidate of every iteration, save/load with a schema version, atomic writes."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.core.history import SCHEMA_VERSION, EPOState
from fluentdream.files import atomic_write

INF, NAN = float("inf"), float("nan")


def hand_made() -> fd.History:
    """Two iterations, M = 2, r = 1 (pool of 4), n = 3; one rejected candidate."""
    h = fd.History(lambdas=np.array([0.1, 1.0]), meta=dict(target="L1.N5", note="é"))
    h.append(np.arange(12).reshape(4, 3), [1.0, 2.0, -INF, 3.0], [4.0, 5.0, NAN, 6.0],
             [3, 1], 2.5, 0.25, 2)
    h.append(np.arange(12, 24).reshape(4, 3), [3.0, 2.0, 0.5, 7.0], [6.0, 5.0, 1.0, 9.0],
             [0, 3], NAN, 0.5, 2)
    return h


def test_arrays_have_the_documented_shapes_and_dtypes():
    a = hand_made().arrays()
    assert a["ids"].shape == (2, 4, 3) and a["ids"].dtype == np.int32
    assert a["target"].shape == a["xentropy"].shape == (2, 4)
    assert a["target"].dtype == np.float32
    assert a["kept"].tolist() == [[3, 1], [0, 3]]
    assert a["restart_lambda"][0] == 2.5 and np.isnan(a["restart_lambda"][1])
    assert a["seconds"].tolist() == [0.25, 0.5] and a["n_scored"].tolist() == [2, 2]


def test_candidates_best_slot_scores_and_truncation():
    h = hand_made()
    ids, f, ce = h.candidates()
    assert len(f) == 7 and np.isfinite(f).all()                 # the rejected one is dropped
    assert ids.shape == (7, 3) and ids[2].tolist() == [9, 10, 11]
    assert h.best_target() == 7.0
    f0, ce0 = h.slot_scores(0)
    assert f0.tolist() == [3.0, 2.0] and ce0.tolist() == [6.0, 5.0]
    t = h.truncated(1)
    assert len(t) == 1 and t.best_target() == 3.0 and t.meta == h.meta
    assert len(h) == 2                                          # the original is untouched
    assert fd.History(np.ones(2)).best_target() == -INF


def test_save_load_round_trip_hand_made(tmp_path):
    h = hand_made()
    h.state = EPOState(iteration=2, slot_ids=np.arange(6).reshape(2, 3),
                       slot_target=np.array([3.0, 7.0], np.float32),
                       slot_xentropy=np.array([6.0, 9.0], np.float32),
                       topk=np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4),
                       fresh=np.array([True, False]), rng_state=np.arange(16, dtype=np.uint8))
    path = h.save(tmp_path / "sub" / "h.npz")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["h.npz"]
    back = fd.History.load(path)
    for name, value in h.arrays().items():
        np.testing.assert_array_equal(back.arrays()[name], value, err_msg=name)
    assert back.meta == h.meta
    for field in dataclasses.fields(EPOState):
        np.testing.assert_array_equal(getattr(back.state, field.name), getattr(h.state, field.name))
    assert isinstance(back.state.iteration, int)
    assert back.state.fresh.dtype == bool and back.state.rng_state.dtype == np.uint8


def test_save_load_round_trip_of_a_real_run(tiny_lm, tmp_path):
    cfg = fd.EPOConfig(iters=3, population_size=3, explore_per_pop=4, topk=16, seq_len=6,
                       restart_frequency=2)
    h = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg)
    back = fd.History.load(h.save(tmp_path / "h.npz"))
    for name, value in h.arrays().items():
        np.testing.assert_array_equal(back.arrays()[name], value, err_msg=name)
    assert back.meta == json.loads(json.dumps(h.meta))
    assert fd.EPOConfig.from_dict(back.meta["config"]) == cfg
    for field in dataclasses.fields(EPOState):
        np.testing.assert_array_equal(getattr(back.state, field.name), getattr(h.state, field.name))


def test_empty_history_round_trip(tmp_path):
    back = fd.History.load(fd.History(np.array([0.0])).save(tmp_path / "h.npz"))
    assert len(back) == 0 and back.state is None and back.lambdas.tolist() == [0.0]


def test_schema_version_is_checked(tmp_path):
    path = hand_made().save(tmp_path / "h.npz")
    with np.load(path) as z:
        arrays = dict(z)
    assert int(arrays["schema_version"]) == SCHEMA_VERSION
    arrays["schema_version"] = np.array(SCHEMA_VERSION + 1)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match=f"history schema {SCHEMA_VERSION + 1}, this version "
                                         f"reads 1, 2, {SCHEMA_VERSION}"):
        fd.History.load(tmp_path / "future.npz")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda fh: fh.write(b"old"))

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]       # no temporary left


def test_attributes_are_the_documented_arrays():
    h = hand_made()
    assert h.ids.shape == (2, 4, 3) and h.ids.dtype == np.int32
    assert h.target.shape == h.xentropy.shape == (2, 4) and h.xentropy.dtype == np.float32
    assert h.kept.shape == (2, 2) and h.kept.tolist() == [[3, 1], [0, 3]]
    assert h.restart_lambda.shape == h.seconds.shape == h.n_scored.shape == (2,)
    assert h.n_scored.tolist() == [2, 2] and h.seconds.tolist() == [0.25, 0.5]
    np.testing.assert_array_equal(h.ids[1], np.arange(12, 24).reshape(4, 3))
    with pytest.raises(ValueError, match="read-only"):
        h.target[0, 0] = 9.0                       # the History owns its rows
    empty = fd.History(np.ones(3))
    assert empty.ids.shape == (0, 0, 0) and empty.target.shape == (0, 0)
    assert empty.kept.shape == (0, 0) and empty.seconds.shape == (0,)


def test_many_appends_equal_the_stacked_rows():
    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, 50, (6, 4)), rng.normal(size=6), rng.uniform(1, 5, 6),
             rng.integers(0, 6, 2), rng.uniform(), rng.uniform(), 4) for _ in range(100)]
    h = fd.History(np.array([0.1, 1.0]))
    for i, row in enumerate(rows):
        h.append(*row)
        if i == 40:
            early = h.target                       # a view handed out mid-run
    assert len(h) == h.n_iters == 100
    for name, k in [("ids", 0), ("target", 1), ("xentropy", 2), ("kept", 3), ("restart_lambda", 4),
                    ("seconds", 5), ("n_scored", 6)]:
        want = np.stack([np.asarray(r[k]) for r in rows])
        np.testing.assert_array_equal(getattr(h, name), want.astype(getattr(h, name).dtype))
    np.testing.assert_array_equal(early, h.target[:41])


def test_trim_keeps_views_handed_out_earlier():
    h = hand_made()
    before = h.target
    h.trim(1)
    assert len(h) == 1 and h.ids.shape == (1, 4, 3)
    h.append(np.zeros((4, 3)), [9.0] * 4, [1.0] * 4, [0, 0], NAN, 0.1, 2)
    assert before[1].tolist() == [3.0, 2.0, 0.5, 7.0] and h.target[1].tolist() == [9.0] * 4
    h.trim(0)
    assert len(h) == 0 and h.ids.shape == (0, 0, 0)
    h.append(np.zeros((2, 5)), [1.0, 2.0], [1.0, 1.0], [1, 0], NAN, 0.1, 1)   # a new shape is fine
    assert h.ids.shape == (1, 2, 5)


def test_truncated_is_a_copy():
    h = hand_made()
    t = h.truncated(1)
    h.trim(0)
    h.append(np.zeros((4, 3)), [9.0] * 4, [1.0] * 4, [0, 0], NAN, 0.1, 2)
    assert t.target.tolist() == [[1.0, 2.0, -INF, 3.0]] and t.kept.tolist() == [[3, 1]]


def test_append_rejects_a_pool_of_another_shape():
    h = hand_made()
    with pytest.raises(ValueError, match=r"ids has shape \(5, 3\), earlier iterations \(4, 3\)"):
        h.append(np.zeros((5, 3)), np.zeros(5), np.zeros(5), [0, 1], NAN, 0.1, 3)
    assert len(h) == 2


def test_repr_is_one_short_line():
    assert repr(hand_made()) == "History(T=2, M=2, P=4, n=3, target='L1.N5', best=7)"
    assert repr(fd.History(np.ones(3))) == "History(T=0, M=3, P=0, n=0, target=None, best=-inf)"
    h = fd.History(np.ones(8), meta=dict(target="L1.N5"))
    for _ in range(300):
        h.append(np.zeros((264, 12)), np.full(264, 3.21), np.ones(264), np.zeros(8), NAN, 0.1, 256)
    assert repr(h) == "History(T=300, M=8, P=264, n=12, target='L1.N5', best=3.21)"


def test_load_reads_each_array_once(tmp_path, monkeypatch):
    # Every NpzFile[key] decompresses the whole member, so reading one row per key and
    # iteration made loading quadratic in the number of iterations.
    path = hand_made().save(tmp_path / "h.npz")
    reads = []
    original = np.lib.npyio.NpzFile.__getitem__

    def counting(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counting)
    fd.History.load(path)
    assert len(reads) == len(set(reads)) and "ids" in reads


def test_files_written_by_the_list_based_history_still_load(tmp_path):
    # Schema 1 as the earlier History wrote it: stacked arrays, float64/int64 scalars per iteration.
    ids = np.arange(24, dtype=np.int32).reshape(2, 4, 3)
    np.savez_compressed(
        tmp_path / "old.npz", lambdas=np.array([0.1, 1.0]), ids=ids,
        target=np.array([[1, 2, -INF, 3], [3, 2, 0.5, 7]], np.float32),
        xentropy=np.array([[4, 5, NAN, 6], [6, 5, 1, 9]], np.float32),
        kept=np.array([[3, 1], [0, 3]], np.int32), restart_lambda=np.array([2.5, NAN]),
        seconds=np.array([0.25, 0.5]), n_scored=np.array([2, 2]),
        schema_version=np.array(1), meta_json=np.array(json.dumps(dict(target="L1.N5"))))
    h = fd.History.load(tmp_path / "old.npz")
    assert repr(h) == "History(T=2, M=2, P=4, n=3, target='L1.N5', best=7)"
    np.testing.assert_array_equal(h.ids, ids)
    assert h.kept.tolist() == [[3, 1], [0, 3]] and h.state is None
    h.append(ids[0], np.ones(4), np.ones(4), [0, 1], NAN, 0.1, 2)      # and the run continues
    assert len(h) == 3


def test_load_rejects_arrays_of_different_lengths(tmp_path):
    path = hand_made().save(tmp_path / "h.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["seconds"] = arrays["seconds"][:1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(fd.UserError, match="disagree on the number of iterations"):
        fd.History.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_honours_the_umask(tmp_path, umask):
    """Results are shared with the user's group: the mode is what a plain open() would give."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.bin", lambda fh: fh.write(b"x"))
        with open(tmp_path / "plain.bin", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    mode = (tmp_path / "out.bin").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain.bin").stat().st_mode & 0o777
