"""Build data/general: a small Pile-like corpus of freely licensed English text, from Debian packages.

    python data/build_general_corpus.py              # ~3 min; downloads ~150 MB of .deb into --cache
    python data/build_general_corpus.py --check      # rebuild in /tmp and compare with the shipped files

Why: SmolLM2-135M was trained on web, educational text and code; the embedded corpus (Python
docstrings) is a narrow slice of that, and its 12-token slices are hard for SmolLM2 (CE 5.71).
This corpus mixes five domains, each from packages whose licenses allow redistribution (SOURCES:
package, what, license, character cap): books, reference works, manuals, scientific manuals and
source code. Steps:
1. `apt-get download` each package (Debian's mirrors; needs apt, as on Debian or Ubuntu) and
   unpack it with `dpkg -x`; record its version;
2. read it into documents (general_sources.READERS), clean paragraphs (prose: >= 4 words, >= 60%
   letters; code kept as written), cut documents into pieces of at most MAX_CHARS at paragraph
   boundaries;
3. deduplicate exactly: a paragraph seen before (lower-cased, whitespace collapsed, in SOURCES
   order) is dropped; code files by their whole text;
4. sample each source's pieces in a seeded order up to its character cap;
5. split by piece: sha1(text) mod 100 < 3 -> validation (3%), shuffle each split (seed 0), so that
   any prefix of it mixes every domain (mining reads the first N tokens);
6. write data/general/{train,validation}.parquet (columns text, source, domain, title; zstd) and
   manifest.json, and the sources table of data/README.md between its markers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from general_sources import READERS  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_CHARS = 4000
VALIDATION_PERCENT = 3
M = 1_000_000
# (name, domain, Debian package, reader, reader options, what, license, character cap)
SOURCES = [
    ("austen", "books", "r-cran-janeaustenr", "austen", {},
     "Jane Austen's six novels (Project Gutenberg texts), by chapter", "public domain (package: MIT)", 5 * M),
    ("web-bible", "books", "sword-text-web", "sword", {},
     "World English Bible, by chapter (markup and footnotes removed)", "public domain", 4 * M),
    ("devils-dictionary", "books", "dict-devil", "dictd", {"dict": "devil"},
     "Ambrose Bierce, The Devil's Dictionary (1911)", "public domain", 1 * M),
    ("gcide", "reference", "dict-gcide", "dictd", {"dict": "gcide"},
     "GNU Collaborative International Dictionary of English (Webster's 1913 + additions)", "GPL-2+", 3 * M),
    ("wordnet", "reference", "dict-wn", "dictd", {"dict": "wn"},
     "WordNet 3.0 glosses and examples", "WordNet 3.0 license (permissive)", 1.2 * M),
    ("jargon", "reference", "dict-jargon", "dictd", {"dict": "jargon"},
     "The Jargon File 4.4.7", "public domain", 1.2 * M),
    ("foldoc", "reference", "dict-foldoc", "dictd", {"dict": "foldoc"},
     "Free On-line Dictionary of Computing", "GFDL-1.1+ (no invariant sections)", 1.2 * M),
    ("debian-handbook", "manuals", "debian-handbook", "html", {"glob": "usr/share/doc/debian-handbook/html/en-US/*.html"},
     "The Debian Administrator's Handbook (English)", "GPL-2+ or CC-BY-SA-3.0", 2 * M),
    ("debian-reference", "manuals", "debian-reference-en", "html", {"glob": "usr/share/debian-reference/*.en.html"},
     "Debian Reference (English)", "GPL-2+", 1.5 * M),
    ("debian-faq", "manuals", "debian-faq", "html", {"glob": "usr/share/doc/debian/FAQ/*.html"},
     "Debian FAQ", "GPL-2+ or verbatim-copying permission", 0.4 * M),
    ("developers-reference", "manuals", "developers-reference", "html", {"glob": "usr/share/developers-reference/*.html"},
     "Debian Developer's Reference", "GPL-2", 0.8 * M),
    ("debian-policy", "manuals", "debian-policy", "html", {"glob": "usr/share/doc/debian-policy/policy.html/*.html"},
     "Debian Policy Manual", "GPL-2+", 1 * M),
    ("gnu-standards", "manuals", "gnu-standards", "text", {"glob": "usr/share/doc/gnu-standards/*.text.gz"},
     "GNU Coding Standards and Information for Maintainers of GNU Software", "GFDL-1.3+ (no invariant sections)", 0.6 * M),
    ("linux-doc", "manuals", "linux-doc-6.1", "html", {"glob": "usr/share/doc/linux-doc-6.1/html/**/*.html", "exclude": "/translations/|/_"},
     "Linux kernel documentation 6.1", "GPL-2.0", 3 * M),
    ("octave-doc", "science", "octave-doc", "html", {"glob": "usr/share/doc/octave/octave.html/*.html"},
     "GNU Octave manual", "GPL-3+", 2 * M),
    ("maxima-doc", "science", "maxima-doc", "html", {"glob": "usr/share/doc/maxima-doc/html/*.html"},
     "Maxima computer algebra manual", "GPL-2", 1.5 * M),
    ("r-manuals", "science", "r-doc-html", "html", {"glob": "usr/share/doc/r-doc-html/manual/*.html"},
     "R manuals (An Introduction to R, R Language Definition, ...)", "GPL-2+ / verbatim-copying permission", 1.2 * M),
    ("python-stdlib", "code", "libpython3.11-stdlib", "python", {"glob": "usr/lib/python3.11/**/*.py"},
     "Python 3.11 standard library source", "PSF-2.0", 3 * M),
]


def fetch(package: str, cache: Path) -> tuple[Path, str]:
    """Download and unpack one package (kept in cache) -> (unpacked root, version)."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "-q", package], cwd=cache, check=True,
                       stdout=subprocess.DEVNULL)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    root = cache / "unpacked" / package
    if not root.exists():       # unpacked beside, then renamed: a killed build leaves no half
        tmp = root.with_name(root.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(tmp)], check=True)
        tmp.rename(root)
    version = subprocess.run(["dpkg-deb", "-f", str(debs[-1]), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return root, version


ENGLISH = frozenset("the of and to a in is that for it as with be by on are or this from".split())


def prose(paragraph: str) -> bool:
    """A paragraph of English running text: >= 4 words, >= 60% Latin letters (not a table of
    symbols, nor another script), and at least one common English function word."""
    letters = sum(c.isascii() and c.isalpha() for c in paragraph)
    words = paragraph.lower().split()
    return len(words) >= 4 and letters >= 0.6 * len(paragraph) and not ENGLISH.isdisjoint(words)


def pieces(text: str, code: bool) -> list[list[str]]:
    """A document -> pieces of at most MAX_CHARS, each a list of paragraphs (code: of blocks)."""
    paras = re.split(r"\n\s*\n", text) if code else [p for p in text.split("\n\n") if prose(p)]
    out, cur, size = [], [], 0
    for p in paras:
        p = p.strip("\n") if code else p
        if not p.strip():
            continue
        for part in [p[i:i + MAX_CHARS] for i in range(0, len(p), MAX_CHARS)]:
            if cur and size + len(part) > MAX_CHARS:
                out.append(cur)
                cur, size = [], 0
            cur.append(part)
            size += len(part) + 2
    return out + ([cur] if cur else [])


def norm(paragraph: str) -> str:
    return " ".join(paragraph.lower().split())


def build(cache: Path, seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    """Every source read, cleaned, deduplicated and capped -> (pieces, one record per source)."""
    seen: set[str] = set()
    rows, records = [], []
    for name, domain, package, reader, opts, what, license_, cap in SOURCES:
        t0 = time.perf_counter()
        root, version = fetch(package, cache)
        code = reader == "python"
        docs = list(READERS[reader](root, opts))
        random.Random(f"{seed}:{name}").shuffle(docs)         # the cap keeps a random share
        kept, chars, dropped = 0, 0, 0
        for title, text in docs:
            if chars >= cap:
                break
            if code:
                key = hashlib.sha1(text.encode()).hexdigest()
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
            for piece in pieces(text, code):
                if not code:
                    fresh = [p for p in piece if norm(p) not in seen]
                    dropped += len(piece) - len(fresh)
                    seen.update(norm(p) for p in fresh)
                    piece = fresh
                body = "\n\n".join(piece)
                if len(body) < 200 or chars >= cap:
                    continue
                rows.append(dict(text=body, source=name, domain=domain, title=title))
                kept, chars = kept + 1, chars + len(body)
        records.append(dict(source=name, domain=domain, package=package, version=version,
                            what=what, license=license_, documents=kept, chars=chars,
                            duplicates_dropped=dropped))
        print(f"{name:22s} {package} {version}: {kept} pieces, {chars / M:.2f}M chars, "
              f"{dropped} duplicates dropped ({time.perf_counter() - t0:.0f} s)", flush=True)
    return pd.DataFrame(rows), records


def split(frame: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """sha1(text) mod 100 < VALIDATION_PERCENT -> validation; each split shuffled."""
    held = frame["text"].map(lambda t: int(hashlib.sha1(t.encode()).hexdigest(), 16) % 100
                             < VALIDATION_PERCENT)
    return {name: part.sample(frac=1.0, random_state=seed).reset_index(drop=True)
            for name, part in (("train", frame[~held]), ("validation", frame[held]))}


def readme_table(records: list[dict], parts: dict[str, pd.DataFrame]) -> str:
    total = sum(r["chars"] for r in records)
    lines = ["| source | domain | Debian package (version) | what | license | share of characters |",
             "|---|---|---|---|---|---:|"]
    for r in records:
        lines.append(f"| `{r['source']}` | {r['domain']} | `{r['package']}` ({r['version']}) | "
                     f"{r['what']} | {r['license']} | {r['chars'] / total:.1%} |")
    by_domain = pd.DataFrame(records).groupby("domain", sort=False)["chars"].sum() / total
    lines += ["", "Domains: " + ", ".join(f"{d} {s:.0%}" for d, s in by_domain.items()) + ".", "",
              "| split | pieces | characters |", "|---|---:|---:|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {len(part):,} | {int(part['text'].str.len().sum()):,} |")
    return "\n".join(lines)


def write(parts: dict[str, pd.DataFrame], records: list[dict], out: Path, readme: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        tmp = out / f".{name}.parquet.tmp"
        part.to_parquet(tmp, compression="zstd", index=False, row_group_size=2000)
        tmp.replace(out / f"{name}.parquet")
    manifest = dict(sources=records, max_chars=MAX_CHARS, validation_percent=VALIDATION_PERCENT,
                    splits={n: dict(pieces=len(p), chars=int(p["text"].str.len().sum()))
                            for n, p in parts.items()})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if readme is not None:
        text = readme.read_text()
        begin, end = "<!-- general-sources:begin -->", "<!-- general-sources:end -->"
        if begin not in text:
            raise SystemExit(f"{readme} has no {begin} marker")
        head, rest = text.split(begin)
        readme.write_text(f"{head}{begin}\n{readme_table(records, parts)}\n{end}{rest.split(end)[1]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("/tmp/fluentdream-general-debs"),
                   help="where the .deb files are downloaded and unpacked")
    p.add_argument("--out", type=Path, default=HERE / "general")
    p.add_argument("--check", action="store_true",
                   help="build into a temporary folder and compare with --out")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    frame, records = build(args.cache)
    parts = split(frame)
    if args.check:
        same = all(pd.read_parquet(args.out / f"{n}.parquet")["text"].equals(part["text"])
                   for n, part in parts.items())
        print("identical to the shipped corpus" if same else "differs from the shipped corpus")
        return 0 if same else 1
    write(parts, records, args.out, HERE / "README.md")
    print(f"{len(frame):,} pieces, {frame['text'].str.len().sum() / M:.1f}M characters in "
          f"{args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
