"""Readers of the general corpus's sources: each turns an unpacked Debian package into documents.

    for title, text in READERS["html"](root, spec): ...   # text: paragraphs joined by blank lines

Used by data/build_general_corpus.py (see its docstring and data/README.md). Every reader yields
(title, text) with one paragraph per block; the builder cleans, cuts, deduplicates and samples.
The formats: R's lazy-load database (Jane Austen's novels), SWORD zText with OSIS markup (the
World English Bible), dictd databases (dictionaries), HTML manuals, plain-text manuals and Python
source files.
"""
from __future__ import annotations

import gzip
import html
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

Doc = tuple[str, str]


def _paragraphs(lines: list[str]) -> list[str]:
    """Hard-wrapped lines -> paragraphs (blank lines separate them; wrapped lines are joined)."""
    out, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return out


# --- R lazy-load database (r-cran-janeaustenr) --------------------------------------------------

def _unserialize(b: bytes):
    """R's XDR serialization (format 'X'), enough for data frames and character vectors: lists,
    pairlists, symbols, strings, integers, logicals and doubles (attributes are read and dropped)."""
    assert b[:2] == b"X\n", "not an XDR-serialized R object"
    pos, refs = 2, []

    def i32() -> int:
        nonlocal pos
        pos += 4
        return struct.unpack(">i", b[pos - 4:pos])[0]

    def item():
        nonlocal pos
        flags = i32()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (242, 253, 254):           # empty environment, base env, NULL
            return None
        if kind == 255:                       # a reference to an earlier symbol
            return refs[(flags >> 8) - 1]
        if kind == 1:                         # symbol: its name follows
            refs.append(item())
            return refs[-1]
        if kind == 9:                         # one string
            n = i32()
            pos += max(n, 0)
            return None if n == -1 else b[pos - n:pos].decode("utf-8", "replace")
        if kind in (2, 6):                    # pairlist, ends with NULL
            out = []
            while kind in (2, 6):
                if has_attr:
                    item()
                tag = item() if has_tag else None
                out.append((tag, item()))
                flags = i32()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            return out
        n = i32()
        if kind in (16, 19, 20):              # character vector, list, expression
            value = [item() for _ in range(n)]
        elif kind in (10, 13, 14):            # logical, integer, double
            size = 8 if kind == 14 else 4
            value = list(struct.unpack(f">{n}{'d' if kind == 14 else 'i'}", b[pos:pos + size * n]))
            pos += size * n
        else:
            raise ValueError(f"R object type {kind} is not supported")
        if has_attr:
            item()
        return value

    version = i32()
    i32(), i32()
    if version == 3:                          # native encoding name
        n = i32()
        pos += n
    return item()


def austen(root: Path, spec: dict) -> Iterator[Doc]:
    """Jane Austen's six novels, one document per chapter."""
    data = (root / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").read_bytes()
    pos = 0
    while pos < len(data):                    # entries: 4-byte length, then a zlib stream
        d = zlib.decompressobj()
        lines = _unserialize(d.decompress(data[pos + 4:]))
        pos = len(data) - len(d.unused_data)
        title = lines[0].title()
        chapters, cur = [], []
        for line in lines[1:]:
            if re.fullmatch(r"\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*", line or ""):
                chapters.append(cur)
                cur = []
            else:
                cur.append(line or "")
        chapters.append(cur)
        for i, ch in enumerate(chapters[1:], 1):      # [0] is the title page
            yield f"{title}, chapter {i}", "\n\n".join(_paragraphs(ch))


# --- SWORD zText (sword-text-web) ----------------------------------------------------------------

def sword(root: Path, spec: dict) -> Iterator[Doc]:
    """A SWORD zText module, one document per chapter: OSIS markup, notes and titles removed."""
    mod = next((root / "usr/share/sword/modules/texts/ztext").iterdir())
    for part in ("ot", "nt"):
        index, blob = (mod / f"{part}.bzs").read_bytes(), (mod / f"{part}.bzz").read_bytes()
        for at in range(0, len(index), 12):
            offset, size, _ = struct.unpack("<III", index[at:at + 12])
            book = zlib.decompress(blob[offset:offset + size]).decode("utf-8")
            book = re.sub(r"<(note|title)\b.*?</\1>", " ", book, flags=re.S)
            name = re.search(r'osisID="([^".]+)"', book)
            for chapter in re.split(r"<chapter\b[^>]*sID=[^>]*>", book)[1:]:
                text = re.sub(r'<div\b[^>]*type="x-p"[^>]*>|<lg\b[^>]*>|</?l\b[^>]*>', "\n\n", chapter)
                text = html.unescape(re.sub(r"<[^>]+>", "", text))
                paras = [re.sub(r"\s+([,.;:?!’”])", r"\1", " ".join(p.split()))
                         for p in text.split("\n\n")]
                yield f"{name[1] if name else part} {at // 12}", "\n\n".join(p for p in paras if p)


# --- dictd databases (dict-gcide, dict-wn, dict-devil, dict-jargon, dict-foldoc) ------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd(root: Path, spec: dict, group_chars: int = 3000) -> Iterator[Doc]:
    """Runs of consecutive entries (about `group_chars` characters: a page of the dictionary) of
    a dictd database, in index order (the 00-database-* headers skipped); markup of its own (pronunciation between backslashes, {cross references},
    "[1913 Webster]" source lines) removed."""
    name = spec["dict"]
    body = gzip.decompress((root / f"usr/share/dictd/{name}.dict.dz").read_bytes())
    seen, group, filled = set(), [], 0
    for line in (root / f"usr/share/dictd/{name}.index").read_text("utf-8", "replace").splitlines():
        word, off, size = line.split("\t")[:3]
        if word.startswith("00-database") or (off, size) in seen:
            continue
        seen.add((off, size))
        raw = body[_b64(off):_b64(off) + _b64(size)].decode("utf-8", "replace")
        raw = re.sub(r"\s*\\[^\\\n]{1,60}\\", "", raw)             # \Ab*do"men\
        raw = re.sub(r"^\s*\[(1913 Webster|WordNet 1\.5|PJC|Century Dict\.)[^\]]*\]\s*$", "", raw,
                     flags=re.M)
        raw = re.sub(r"^\s*\(\d{4}-\d\d-\d\d\)\s*$", "", raw, flags=re.M)   # FOLDOC's dates
        raw = raw.replace("{", "").replace("}", "")
        group.append("\n\n".join(_paragraphs(raw.splitlines())))
        filled += len(group[-1])
        if filled >= group_chars:
            yield f"{name}: {word}", "\n\n".join(group)
            group, filled = [], 0
    if group:
        yield f"{name}: end", "\n\n".join(group)


# --- HTML manuals --------------------------------------------------------------------------------

class _Text(HTMLParser):
    """Paragraphs of an HTML page: block elements end one; code blocks (pre), navigation and
    scripts are skipped, inline code is kept (it is part of the sentence)."""
    BLOCK = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "blockquote",
             "div", "br", "tr", "table", "ul", "ol", "dl", "section", "caption"}
    SKIP = {"script", "style", "pre", "head", "title"}
    NAV = re.compile(r"(nav\w*|\w*sidebar\w*|related|footer|header|toc|breadcrumbs?|wy-menu.*|"
                     r"wy-side.*|rst-footer-buttons|navigation|search)")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras, self.cur, self.skip = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCK:
            self._end()
        words = " ".join(v or "" for k, v in attrs if k in ("class", "role")).split()
        if tag in self.SKIP or tag == "nav" or (tag in ("div", "table", "ul")
                                                and any(self.NAV.fullmatch(w) for w in words)):
            self.skip.append(tag)
        elif self.skip and tag == self.skip[-1]:
            self.skip.append(tag)             # nested element of the skipped kind

    def handle_endtag(self, tag):
        if self.skip and tag == self.skip[-1]:
            self.skip.pop()
        if tag in self.BLOCK:
            self._end()

    def handle_data(self, data):
        if not self.skip:
            self.cur.append(data)

    def _end(self):
        text = " ".join("".join(self.cur).split())
        if text:
            self.paras.append(text)
        self.cur = []


def html_pages(root: Path, spec: dict) -> Iterator[Doc]:
    """One document per HTML page under spec["glob"] (sorted; paths matching spec["exclude"],
    e.g. translations, skipped)."""
    for path in sorted(root.glob(spec["glob"])):
        if path.is_file() and not re.search(spec.get("exclude", "^$"), str(path)):
            parser = _Text()
            parser.feed(path.read_text("utf-8", "replace"))
            parser.close()
            parser._end()
            yield str(path.relative_to(root)), "\n\n".join(parser.paras)


def text_files(root: Path, spec: dict) -> Iterator[Doc]:
    """Plain-text manuals (gzip allowed), one document per file."""
    for path in sorted(root.glob(spec["glob"])):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode("utf-8", "replace").splitlines()
        yield str(path.relative_to(root)), "\n\n".join(_paragraphs(lines))


# --- source code ---------------------------------------------------------------------------------

def python_source(root: Path, spec: dict) -> Iterator[Doc]:
    """Python modules as written (tests, idlelib's and lib2to3's data and encodings skipped)."""
    for path in sorted(root.glob(spec["glob"])):
        rel = str(path.relative_to(root))
        if not path.is_file() or re.search(r"/(test|tests|idle_test|encodings|lib2to3|site-packages|dist-packages)/", rel):
            continue
        yield rel, path.read_text("utf-8", "replace")


READERS = {"austen": austen, "sword": sword, "dictd": dictd, "html": html_pages,
           "text": text_files, "python": python_source}
