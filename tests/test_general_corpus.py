"""The general corpus (data/general) and its loader: DataSource("general"), `mine --dataset general`."""
import itertools
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from fluentdream.cli import main
from fluentdream.data import corpus
from fluentdream.data.corpus import CORPORA, DataSource, documents
from fluentdream.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_general(tmp_path, monkeypatch):
    """A corpus folder laid out like data/general (two splits and a manifest beside them)."""
    folder = tmp_path / "general"
    folder.mkdir()
    pd.DataFrame(dict(text=["The first piece of text.", "A second piece, longer than the first."],
                      source=["a", "b"], domain=["books", "code"], title=["t1", "t2"])
                 ).to_parquet(folder / "train.parquet")
    pd.DataFrame(dict(text=["Held-out text."], source=["a"], domain=["books"], title=["t3"])
                 ).to_parquet(folder / "validation.parquet")
    (folder / "manifest.json").write_text(json.dumps({"sources": []}))
    monkeypatch.setitem(corpus.CORPORA, "general", folder)
    return folder


def test_general_resolves_to_its_split_files_and_ignores_the_manifest(tiny_general):
    assert list(DataSource("general").texts()) == ["The first piece of text.",
                                                    "A second piece, longer than the first."]
    assert list(DataSource("general", split="validation").texts()) == ["Held-out text."]


def test_a_missing_split_or_corpus_is_a_one_line_error(tiny_general, monkeypatch):
    with pytest.raises(UserError, match=r"general corpus has no split 'test'; allowed: train, "
                                        r"validation"):
        DataSource("general", split="test").open()
    monkeypatch.setitem(corpus.CORPORA, "general", tiny_general / "gone")
    with pytest.raises(UserError, match="general corpus is missing"):
        DataSource("general").open()


def test_a_local_folder_named_like_a_corpus_wins(tmp_path, monkeypatch):
    """A user's own folder called `general` is read as a folder, not as the shipped corpus."""
    (tmp_path / "general").mkdir()
    pd.DataFrame(dict(text=["mine"])).to_parquet(tmp_path / "general" / "train.parquet")
    monkeypatch.chdir(tmp_path)
    assert list(DataSource("general").texts()) == ["mine"]


def test_the_shipped_corpus_mixes_its_domains_from_the_first_rows():
    """Mining reads the first N tokens, so the shuffled splits must mix every domain early."""
    manifest = json.loads((CORPORA["general"] / "manifest.json").read_text())
    domains = {s["domain"] for s in manifest["sources"]}
    train = pd.read_parquet(CORPORA["general"] / "train.parquet", columns=["source", "domain"])
    assert set(train["domain"].head(200)) == domains and len(domains) >= 4
    assert set(train["source"]) == {s["source"] for s in manifest["sources"]}
    chars = sum(s["chars"] for s in manifest["sources"])
    assert 20e6 < chars < 60e6                                     # a few tens of millions
    assert max(s["chars"] for s in manifest["sources"]) < 0.25 * chars   # no source dominates


def test_the_splits_share_no_text_and_hold_no_duplicate():
    texts = {n: pd.read_parquet(CORPORA["general"] / f"{n}.parquet", columns=["text"])["text"]
             for n in ("train", "validation")}
    assert texts["train"].is_unique and texts["validation"].is_unique
    assert not set(texts["train"]) & set(texts["validation"])
    assert 0.01 < len(texts["validation"]) / len(texts["train"]) < 0.06


def test_every_source_and_license_is_in_data_readme():
    manifest = json.loads((CORPORA["general"] / "manifest.json").read_text())
    table = (ROOT / "data" / "README.md").read_text().split("<!-- general-sources:begin -->")[1]
    for s in manifest["sources"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{s['source']}` |"))
        assert s["package"] in row and s["license"] in row and s["version"] in row
        assert re.search(r"\d+\.\d%", row)                           # its share


def test_documents_of_the_general_corpus_tokenize(tiny_general):
    from fluentdream.models import load_model
    tok = load_model("embedded").tokenizer
    docs = list(itertools.islice(documents(DataSource("general"), tok), 5))
    assert [d for d, _ in docs] == [0, 1] and all(ids for _, ids in docs)


def test_mine_reads_the_general_corpus(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["mine", "--model", "embedded", "--dataset", "general", "--layers", "1",
                 "--top-k", "2", "--tokens", "600", "--out", str(out), "--no-progress"]) == 0
    examples = pd.read_parquet(out / "examples.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert len(examples) > 0 and summary["dataset"] == "general"
