"""The corpus of the embedded model (a helper of 00_build_embedded_model.py, which says what it
builds and why): paragraphs of English documentation text already installed on this machine,
cleaned of code and markup, de-duplicated and split train/validation by a hash of their text;
and the corpus README that says where every part came from and under which license.

    splits, versions = build_corpus(cfg, Path("data/corpus"))   # cfg: the script's Config
    text = corpus_readme(cfg, metrics)
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import sysconfig
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# name -> (kind, license, where). kind "module" = docstrings of every .py under that package.
SOURCES = {
    "stdlib": ("stdlib", "PSF-2.0", "docstrings of the Python standard library (tests excluded)"),
    "pydoc_topics": ("topics", "PSF-2.0", "`pydoc_data.topics`: the language reference / help() topic texts"),
    "numpy": ("module", "BSD-3-Clause", "docstrings of numpy"),
    "pandas": ("module", "BSD-3-Clause", "docstrings of pandas"),
    "matplotlib": ("module", "Matplotlib License (PSF-based, BSD-compatible)", "docstrings of matplotlib"),
    "networkx": ("module", "BSD-3-Clause", "docstrings of networkx"),
    "sympy": ("module", "BSD-3-Clause", "docstrings of sympy"),
    "torch": ("module", "BSD-3-Clause (PyTorch's own Python code)", "docstrings of torch (third-party dirs excluded)"),
    "transformers": ("module", "Apache-2.0", "docstrings of transformers"),
}
SKIP_DIRS = {"test", "tests", "testing", "_vendor", "vendor", "vendored", "third_party", "thirdparty",
             "externals", "site-packages", "__pycache__"}

CODE_DIRECTIVES = ("code", "code-block", "sourcecode", "doctest", "testcode", "testoutput", "math",
                   "plot", "ipython", "autosummary", "toctree", "image", "figure", "literalinclude",
                   "csv-table", "table", "list-table", "productionlist", "highlight", "raw", "only")
ROLE = re.compile(r":[A-Za-z][\w:.-]*:`(~?)([^`]*)`")
UNDERLINE = re.compile(r"^\s*([-=~^*+#`'\"_.:])\1{2,}\s*$")
STOPWORDS = {"the", "a", "an", "is", "are", "of", "to", "in", "and", "or", "if", "be", "this", "that",
             "it", "for", "with", "as", "by", "not", "on", "which", "from", "will", "can", "when"}


def role_text(m: re.Match) -> str:
    """:func:`~a.b.c` -> c, :class:`a.b` -> a.b, :ref:`text <target>` -> text."""
    tilde, body = m.group(1), m.group(2)
    body = re.sub(r"\s*<[^>]*>$", "", body).strip()
    return body.rsplit(".", 1)[-1] if tilde else body


def strip_blocks(text: str) -> list[str]:
    """Drop fenced code, reST literal blocks (after `::`) and code directives; keep prose lines."""
    out, fence, literal_indent = [], False, None
    for line in text.expandtabs(4).split("\n"):
        s = line.strip()
        if s.startswith("```"):
            fence = not fence
            out.append("")
            continue
        if fence:
            continue
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not s or indent > literal_indent:
                continue
            literal_indent = None
        if s.startswith(".. "):
            name = s[3:].split("::")[0].strip()
            if name in CODE_DIRECTIVES or "::" not in s:  # code, or a comment / link target
                literal_indent = indent
            out.append("")
            continue
        if s.endswith("::"):
            literal_indent = indent
            line = line.rstrip()[:-1] if s != "::" else ""
        out.append(line)
    return out


def is_code_line(s: str) -> bool:
    if s.startswith((">>>", "...", "$ ", "% ", "#", "In [", "Out[")):
        return True
    if re.match(r"^(def|class|import|from|return|raise|yield|for|while|if|elif|else|try|except|with|"
                r"lambda|assert|async|await|print)\b.*[:(=]", s) and not re.search(r"[a-z]{2,}\.\s", s):
        return True
    letters = sum(c.isalpha() or c == " " for c in s)
    return letters < 0.72 * len(s)


def clean_paragraph(lines: list[str]) -> str | None:
    if any(l.strip().startswith(">>>") for l in lines):  # a doctest and its output
        return None
    kept = [l.strip() for l in lines
            if l.strip() and not UNDERLINE.match(l) and not is_code_line(l.strip())]
    if not kept:
        return None
    text = " ".join(kept)
    text = ROLE.sub(role_text, text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)       # `text <url>`_
    text = re.sub(r"``([^`]+)``", r"\1", text)                     # ``literal``
    text = re.sub(r"`([^`]+)`_?", r"\1", text)                     # `interpreted`
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)                  # **bold**
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*?)\*(?!\w)", r"\1", text)  # *emphasis*
    text = re.sub(r"\[([^\]]+)\]\((?:https?://|\.?/)[^)]*\)", r"\1", text)  # [md](link)
    text = re.sub(r"\s+", " ", text).strip()
    words = text.split()
    if len(words) < 6 or not STOPWORDS.intersection(w.lower().strip(",.;:") for w in words):
        return None
    alpha_words = sum(w.strip(",.;:()'\"!?").isalpha() for w in words)
    if alpha_words < 0.6 * len(words) or sum(c.isalpha() or c == " " for c in text) < 0.8 * len(text):
        return None
    return text


def paragraphs(doc: str) -> list[str]:
    out, block = [], []
    for line in strip_blocks(doc) + [""]:
        if line.strip():
            block.append(line)
        elif block:
            p = clean_paragraph(block)
            if p:
                out.append(p)
            block = []
    return out


def iter_py_files(root: Path, limit: int):
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
                   and not p.name.startswith("test_"))
    return files[:limit] if limit else files


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def file_paragraphs(path: Path) -> tuple[int, list[str]]:
    docs = docstrings(path)
    return len(docs), [p for d in docs for p in paragraphs(d)]


def source_paragraphs(name: str, cfg, pool) -> tuple[int, list[str], str]:
    """(number of docstrings, cleaned paragraphs in file order, version string) of one source."""
    kind = SOURCES[name][0]
    if kind == "topics":
        import pydoc_data.topics as t
        topics = sorted(t.topics.items())[: cfg.max_files_per_source or None]
        return len(topics), [p for _, v in topics for p in paragraphs(v)], f"Python {sys.version.split()[0]}"
    if kind == "stdlib":
        root, version = Path(sysconfig.get_paths()["stdlib"]), f"Python {sys.version.split()[0]}"
    else:
        root = Path(importlib.util.find_spec(name).origin).parent  # located, not imported
        version = f"{name} {importlib.metadata.version(name)}"
    results = list(pool.map(file_paragraphs, iter_py_files(root, cfg.max_files_per_source), chunksize=8))
    return sum(n for n, _ in results), [p for _, ps in results for p in ps], version


def build_corpus(cfg, out: Path):
    import pandas as pd
    from tqdm import tqdm

    rows, seen, versions = [], set(), {}
    with ProcessPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for name in tqdm(cfg.sources.split(","), desc="corpus sources", file=sys.stdout):
            n_docs, paras, versions[name] = source_paragraphs(name, cfg, pool)
            n_before = len(rows)
            for para in paras:
                if len(para) >= cfg.min_doc_chars and para not in seen:
                    seen.add(para)
                    rows.append((para, name))
            print(f"  {name}: {n_docs} docstrings -> {len(rows) - n_before} unique paragraphs", flush=True)
    df = pd.DataFrame(rows, columns=["text", "source"])
    h = df.text.map(lambda s: int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) % 1000)
    splits = {"train": df[h >= cfg.val_per_mille].reset_index(drop=True),
              "validation": df[h < cfg.val_per_mille].reset_index(drop=True)}
    out.mkdir(parents=True, exist_ok=True)
    for split, d in splits.items():
        d.to_parquet(out / f"{split}.parquet", compression="zstd", index=False)
    return splits, versions


def corpus_readme(cfg, m: dict) -> str:
    by_src = m["corpus_train_tokens_by_source"]
    rows = "\n    ".join(f"| `{s}` | {SOURCES[s][2]} | {m['source_versions'][s]} | {SOURCES[s][1]} | "
                     f"{by_src.get(s, '')} |" for s in cfg.sources.split(","))
    return textwrap.dedent(f"""\
    # Corpus for the embedded model

    `data/corpus/{{train,validation}}.parquet` — columns `text` (one cleaned paragraph per row) and
    `source`. Load with

        datasets.load_dataset("parquet", data_files={{"train": "data/corpus/train.parquet",
                                                      "validation": "data/corpus/validation.parquet"}})

    Built by `python experiments/00_build_embedded_model.py` from text that was already installed on
    the build machine; nothing was downloaded.

    ## Sources and licenses

    | source | what | version read | license | train tokens |
    |---|---|---|---|---|
    {rows}

    Only docstrings (module, class, function) are used; tests, vendored and third-party
    directories are skipped. Licenses were checked in each package's `*.dist-info` metadata.
    All are permissive; redistribution keeps the notices:
    - Python: Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved (PSF License Agreement v2).
    - numpy: Copyright (c) 2005-2025, NumPy Developers (BSD-3-Clause).
    - pandas: Copyright (c) 2008-2011, AQR Capital Management, LLC, Lambda Foundry, Inc. and PyData
      Development Team; 2011-2026, Open source contributors (BSD-3-Clause).
    - matplotlib: Copyright (c) 2012- Matplotlib Development Team; All Rights Reserved (Matplotlib License).
    - networkx: Copyright (c) 2004-2025, NetworkX Developers (BSD-3-Clause).
    - sympy: Copyright (c) 2006-2023 SymPy Development Team (BSD-3-Clause).
    - torch: Copyright (c) 2016- Facebook, Inc (Adam Paszke) and the other copyright holders listed in torch's LICENSE (BSD-3-Clause).
    - transformers: Copyright 2018- The Hugging Face team (Apache License 2.0).

    ## Cleaning
    1. Docstrings are read with `ast` (nothing is imported except `pydoc_data.topics`).
    2. Removed: fenced code blocks, reST literal blocks (after `::`), code-like directives
       (`.. code-block::`, `.. math::`, ...), reST comments, whole paragraphs containing a `>>>`
       doctest, section underlines, and lines that look like code (shell/doctest prompts, Python
       statements, or fewer than 72% letters and spaces).
    3. reST/Markdown markup is flattened (``:func:`~a.b` `` -> `b`, ``` ``x`` ``` -> `x`, `**b**` -> `b`,
       links -> their text); whitespace is normalized; each paragraph becomes one document.
    4. Kept only paragraphs of >= {cfg.min_doc_chars} characters and >= 6 words, with at least one common
       English function word, >= 60% alphabetic words and >= 80% letters/spaces.
    5. Exact de-duplication across all sources (first occurrence wins, sources in the order above).
    6. Split by document: sha1(text) mod 1000 < {cfg.val_per_mille} -> validation ({cfg.val_per_mille / 10:g}%).

    ## Size
    | split | documents | tokens (vocab-{m['vocab_size']} BPE, one `<|endoftext|>` per document) |
    |---|---|---|
    | train | {m['corpus_documents']['train']:,} | {m['corpus_tokens']['train']:,} |
    | validation | {m['corpus_documents']['validation']:,} | {m['corpus_tokens']['validation']:,} |
    """)
