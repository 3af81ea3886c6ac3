"""Dataset mining (DESIGN §8): exact streaming top-k, re-scoring on the dreams' axes, Ray sharding,
the random-prompt baseline and the fluency calibration, and the `mine` command's bad inputs."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

import fluentdream as fd
from fluentdream import cli
from fluentdream.data import calibration, mining
from fluentdream.core.scoring import Scorer, xentropy
from fluentdream.core.scoring.hooks import capture
from fluentdream.core.tokens import allowed_tokens

CFG = mining.MineConfig(top_k=5, context=32, window=6, batch_size=3, tokens=2500)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A parquet of real text with a duplicated document (exact ties), a too-short one, an empty one."""
    import pydoc_data.topics

    texts = [t[:700] for t in list(pydoc_data.topics.topics.values())[:12]]
    texts = texts[:4] + ["", "tiny", texts[2]] + texts[4:]
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    pd.DataFrame({"text": texts, "source": "pydoc"}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return fd.load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def features(lm):
    return [mining.neurons(1), mining.random_residual(2, lm.d_model, n=4, seed=7)]


@pytest.fixture(scope="module")
def mined(lm, corpus, features):
    return mining.mine(lm, mining.DataSource(str(corpus)), features, CFG)


def brute_force(lm, corpus, features, cfg):
    """Every context window run alone and unpadded; all window maxima sorted in Python."""
    texts = pd.read_parquet(corpus)["text"].tolist()
    cands, seen = [[] for _ in features], 0
    for doc, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:cfg.tokens - seen]
        seen += len(ids)
        stride = cfg.context - cfg.window + 1
        for start in range(0, len(ids) - cfg.window + 1, stride):
            chunk = torch.tensor([ids[start:start + cfg.context]])
            with torch.no_grad(), capture(lm, tuple(f.site for f in features)) as acts:
                lm.model(input_ids=chunk, use_cache=False)
            for out, f in zip(cands, features):
                v = f.values(acts)[0, cfg.window - 1:]                         # (eligible, F)
                best, arg = v.max(0)
                out += [(j, best[j].item(), doc, start + cfg.window - 1 + arg[j].item())
                        for j in range(v.shape[1])]
        if seen >= cfg.tokens:
            break
    rows = []
    for f, out in zip(features, cands):
        out.sort(key=lambda c: (c[0], -c[1], c[2], c[3]))
        for j, group in itertools.groupby(out, key=lambda c: c[0]):
            top = list(group)[:cfg.top_k]
            rows += [(f.site[0], j, r, v, d, p) for r, (_, v, d, p) in enumerate(top)]
    return pd.DataFrame(rows, columns=["site", "feature", "rank", "activation", "doc_id", "position"])


def test_streaming_topk_equals_brute_force(lm, corpus, features, mined):
    got = mined.examples
    want = brute_force(lm, corpus, features, CFG)
    keys = ["site", "feature", "rank", "doc_id", "position"]
    pd.testing.assert_frame_equal(got[keys].reset_index(drop=True), want[keys])
    np.testing.assert_allclose(got["activation"], want["activation"], rtol=1e-5, atol=1e-6)
    assert not got.duplicated(["site", "feature", "doc_id", "position"]).any()
    # the duplicated document ties exactly with its original; the lower doc id ranks first
    ties = got[got["doc_id"].isin([2, 6])].groupby(["site", "feature", "position"])["doc_id"]
    assert (ties.nunique() == 2).any() and (ties.first() == 2).all()
    assert mined.summary["tokens_scanned"] == CFG.tokens
    assert (got["position"] >= CFG.window - 1).all()


def test_examples_sit_on_the_dreams_axes(lm, corpus, mined):
    df = mined.examples
    texts = pd.read_parquet(corpus)["text"].tolist()
    for i in [0, 7, len(df) // 2, len(df) - 1]:
        r = df.iloc[i]
        doc = lm.tokenizer(texts[r.doc_id], add_special_tokens=False)["input_ids"]
        assert list(r.window_ids) == doc[r.position - CFG.window + 1:r.position + 1]
        assert r.window_text == lm.tokenizer.decode(list(r.window_ids))
        f, ce = Scorer(lm, fd.parse_target(r.target, lm), retokenize=False).score(
            torch.tensor([list(r.window_ids)]))
        assert f.item() == pytest.approx(r.window_activation, abs=1e-5)
        assert ce.item() == pytest.approx(r.window_xentropy, abs=1e-5)
    assert set(df["target"]) >= {"L1.N0", "resid:L2:v7", "resid:L2:v10"}


def test_choose_in_context_then_rescore_only_the_chosen(lm, corpus, features, mined):
    """The scan's own rows (TopK.frame) are the full mine's in-context columns, and re-scoring only
    some features (TopK.only) gives exactly their rows of the full mine."""
    tops, _ = mining.scan(lm, mining.DataSource(str(corpus)), features, CFG)
    full = mined.examples
    for f, t in zip(features, tops):
        mine = full[full["site"] == f.site[0]].reset_index(drop=True)
        frame = t.frame(f.names(lm))
        pd.testing.assert_frame_equal(frame[["target", "feature", "rank", "activation"]],
                                      mine[["target", "feature", "rank", "activation"]])
        assert all((a == b).all() for a, b in zip(frame["window_ids"], mine["window_ids"]))
    keep = ["L1.N3", "resid:L2:v9"]
    masked = [t.only(torch.tensor([n in keep for n in f.names(lm)])) for f, t in zip(features, tops)]
    some = mining.rescore(lm, features, masked, CFG)
    assert sorted(some["target"].unique()) == sorted(keep)
    want = full[full["target"].isin(keep)].reset_index(drop=True)
    cols = ["target", "rank", "activation", "window_activation", "window_xentropy", "doc_id"]
    pd.testing.assert_frame_equal(some[cols].reset_index(drop=True), want[cols], atol=1e-5, rtol=1e-5)


def test_topk_merge_orders_ties_by_doc_then_position():
    top = mining.TopK.empty(1, 3, window=1)
    cand = dict(values=torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]]), doc=torch.tensor([[4, 9, 3, 3, 1]]),
                pos=torch.tensor([[0, 5, 8, 6, 2]]))
    other = mining.TopK(cand["values"], cand["doc"], cand["pos"], torch.arange(5).view(1, 5, 1))
    top.merge(other)
    assert top.doc.tolist() == [[3, 3, 9]] and top.pos.tolist() == [[6, 8, 5]]
    assert top.windows.view(-1).tolist() == [3, 2, 1]


def test_context_windows_tile_every_eligible_position():
    ids, context, window = list(range(50)), 10, 4
    covered = [s + p for s, toks in mining.context_windows(ids, context, window)
               for p in range(window - 1, len(toks))]
    assert covered == list(range(window - 1, 50))
    assert list(mining.context_windows(ids[:3], context, window)) == []


def test_ray_shards_merge_exactly(lm, corpus, features, mined):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = mining.mine(lm, mining.DataSource(str(corpus)), features, CFG, executor="ray",
                          workers=2)
    finally:
        if started:
            ray.shutdown()
    pd.testing.assert_frame_equal(got.examples, mined.examples)
    assert got.summary["tokens_scanned"] == mined.summary["tokens_scanned"]
    assert got.summary["workers"] == 2


def test_random_prompt_baseline_and_zscores(lm, features, mined):
    base = calibration.random_prompt_baseline(lm, features[1:], n_prompts=64, n_tokens=6, seed=3)
    pool = allowed_tokens(lm).nonzero().squeeze(1)
    ids = pool[torch.randint(len(pool), (64, 6), generator=torch.Generator().manual_seed(3))]
    f, _ = Scorer(lm, fd.parse_target("resid:L2:v8", lm), retokenize=False).score(ids)
    row = base.set_index("target").loc["resid:L2:v8"]
    assert row["mean"] == pytest.approx(f.mean().item(), abs=1e-5)
    assert row["sd"] == pytest.approx(f.std().item(), abs=1e-5)
    resid = mined.examples[mined.examples["site"] == "resid"]
    z = calibration.zscores(resid, base)
    m = resid["target"].map(base.set_index("target")["mean"])
    s = resid["target"].map(base.set_index("target")["sd"])
    np.testing.assert_allclose(z, (resid["window_activation"] - m) / s)
    with pytest.raises(ValueError, match="no baseline"):
        calibration.zscores(mined.examples, base)


def test_fluency_calibration_table(lm, corpus, tmp_path):
    src = mining.DataSource(str(corpus))
    table = calibration.fluency_calibration(lm, src, lengths=(2, 6, 12, 16), n_slices=20, seed=1)
    slices = calibration._sample_slices(src, lm.tokenizer, 16, 20, 1, None)
    with torch.no_grad():
        ce12 = xentropy(lm.model(input_ids=slices[:, :12]).logits, slices[:, :12])
    row = table.set_index("n").loc[12]
    assert row["mean"] == pytest.approx(ce12.mean().item(), abs=1e-5)
    assert row["count"] == 20 and table["n"].tolist() == [2, 6, 12, 16]
    thr = calibration.in_distribution_threshold(table, 12)
    assert thr == pytest.approx(row["mean"] + 2 * row["sd"])
    back = calibration.load_table(calibration.save_table(table, tmp_path, "fluency"))
    assert calibration.in_distribution_threshold(back, 12) == pytest.approx(thr)
    assert back.attrs["n_slices"] == 20 and (tmp_path / "fluency.csv").is_file()
    with pytest.raises(ValueError, match="no slice length 13"):
        calibration.in_distribution_threshold(table, 13)


def test_cli_mine_writes_examples_summary_baseline(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "mined"
    code = cli.main(["mine", "--model", str(tiny_model_dir), "--dataset", str(corpus),
                     "--layers", "0,1", "--top-k", "3", "--tokens", "800", "--context", "32",
                     "--resid-directions", "2", "--baseline-prompts", "16", "--out", str(out),
                     "--no-progress"])
    assert code == 0 and str(out) in capsys.readouterr().out
    df = pd.read_parquet(out / "examples.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens_scanned"] == 800 and summary["tokens_per_second"] > 0
    assert {"feature", "rank", "activation", "doc_id", "position", "window_ids", "window_text",
            "window_activation", "window_xentropy"} <= set(df.columns)
    assert set(zip(df["site"], df["layer"])) == {("mlp", 0), ("mlp", 1), ("resid", 0), ("resid", 1)}
    assert len(pd.read_parquet(out / "baseline.parquet")) == 4


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "no-such-user/no-such-dataset"], "cannot load dataset"),
    (["--dataset", "./missing/dir"], "does not exist"),
    (["--text-column", "body"], "no text column 'body'"),
    (["--layers", "7"], "layer 7 is out of range"),
    (["--tokens", "0"], "tokens must be a positive integer"),
    (["--tokens", "1", "--context", "32"], "no document of at least 12 tokens"),
])
def test_cli_mine_bad_input(tiny_model_dir, corpus, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    argv = ["mine", "--model", str(tiny_model_dir), "--dataset", str(corpus), "--layers", "1",
            "--out", str(out), "--no-progress"]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
