"""History: every candidate of every iteration, save/load with a schema version, atomic writes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.history import SCHEMA_VERSION, EPOState, atomic_write

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
                                         f"reads {SCHEMA_VERSION}"):
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
