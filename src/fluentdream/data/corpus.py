"""Text datasets streamed through `datasets`, tokenized into documents and context windows.

    src = DataSource("embedded")                       # the repo's data/corpus
    src = DataSource("general", split="validation")    # the repo's data/general (SmolLM2's)
    src = DataSource("monology/pile-uncopyrighted")    # a hub name, streamed
    for doc_id, ids in documents(src, tokenizer, tokens=10**6): ...

Used by mining (DESIGN §8) and by the fluency calibration (paper §3, Fig 5a).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UserError

# English function words: word rules that look for content words (02, 05) skip them.
STOPWORDS = frozenset("""about above after again against also among because been before being
below between both but could does doing down during each either else even every from further have
having here into itself just last least less like many more most much must next none only other
ours over same should since some such than that their them then there these they this those
through under until upon very were what when where which while will with within without would
your yours""".split())
# Corpora that ship in the repository (data/README.md): the embedded model's own training text,
# and the general-text mix that the smollm2 preset reads (closer to SmolLM2's training data).
CORPORA = {"embedded": Path(__file__).resolve().parents[3] / "data" / "corpus",
           "general": Path(__file__).resolve().parents[3] / "data" / "general"}
EMBEDDED_CORPUS = CORPORA["embedded"]
FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text",
                 ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class DataSource:
    """A text dataset read through `datasets`, streamed (nothing is downloaded whole).

    dataset: "embedded" (the repo's data/corpus) or "general" (data/general; from an installed
    package give their paths instead), a local file (.parquet/.json/.jsonl/.txt/.csv) or
    directory of them, or a hub name such as "monology/pile-uncopyrighted". A single file is one
    split, whatever `split` says. The repo's corpora have the splits train and validation.
    """
    dataset: str
    split: str = "train"
    text_column: str = "text"

    def _load(self):
        import datasets
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        name, path = self.dataset, Path(self.dataset).expanduser()
        if name in CORPORA and not path.exists():
            return self._load_shipped(datasets, name)
        if path.is_file() and path.suffix not in FILE_BUILDERS:
            raise UserError(f"dataset file {name!r} has an unknown type; allowed: "
                            f"{', '.join(FILE_BUILDERS)}")
        if not path.exists() and name.startswith((".", "/", "~")):
            raise UserError(f"dataset path {name!r} does not exist")
        try:
            if path.is_file():
                return datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path),
                                             split="train", streaming=True)
            return datasets.load_dataset(str(path) if path.is_dir() else name, split=self.split,
                                         streaming=True)
        except Exception as e:  # datasets raises many types: connection, not found, split, format
            raise UserError(f"cannot load dataset {self.dataset!r} ({type(e).__name__}: "
                            f"{(str(e) or '?').splitlines()[0]}); allowed: 'embedded', 'general', a local "
                            "parquet/json/text file or directory, or a hub dataset name "
                            "reachable online or in the HF cache") from None

    def _load_shipped(self, datasets, name: str):
        """A corpus of CORPORA: its split's parquet file, named explicitly (the folder also
        holds a manifest that `datasets` would otherwise take for data)."""
        folder = CORPORA[name]
        file = folder / f"{self.split}.parquet"
        if not folder.is_dir():
            raise UserError(f"the {name} corpus is missing from {folder} (an installed package "
                            "does not ship data/); give --dataset PATH to the corpus directory "
                            "or one of its parquet files")
        if not file.is_file():
            raise UserError(f"the {name} corpus has no split {self.split!r}; allowed: "
                            f"{', '.join(sorted(f.stem for f in folder.glob('*.parquet')))}")
        return datasets.load_dataset("parquet", data_files={self.split: str(file)},
                                     split=self.split, streaming=True)

    def open(self):
        """The streaming dataset, after checking that it has rows and the text column."""
        ds = self._load()
        first = next(iter(ds), None)
        if first is None:
            raise UserError(f"dataset {self.dataset!r} (split {self.split!r}) has no rows")
        if self.text_column not in first:
            raise UserError(f"dataset {self.dataset!r} has no text column {self.text_column!r}; "
                            f"its columns are {sorted(first)} (choose one with --text-column)")
        return ds

    def texts(self) -> Iterator[str]:
        for row in self.open():
            text = row[self.text_column]
            yield text if isinstance(text, str) else ("" if text is None else str(text))


def documents(source: DataSource, tokenizer, tokens: int | None = None,
              batch: int = 64) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) in dataset order, no BOS; stops after `tokens` tokens in all (the last
    document cut short), so every shard of a sharded scan sees the same documents."""
    texts, doc_id, seen = source.texts(), 0, 0
    while chunk := list(itertools.islice(texts, batch)):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids = ids if tokens is None else ids[:tokens - seen]
            seen += len(ids)
            yield doc_id, ids
            doc_id += 1
            if tokens is not None and seen >= tokens:
                return


def context_windows(ids: list[int], context: int, window: int) -> Iterator[tuple[int, list[int]]]:
    """(start, tokens) of one document; consecutive windows overlap by window - 1 tokens so that
    their eligible positions [window - 1, context) tile the document from position window - 1."""
    stride = context - (window - 1)
    for start in range(0, max(len(ids) - window + 1, 0), stride):
        yield start, ids[start:start + context]
