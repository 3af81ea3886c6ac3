"""Splicing the results table into the README, and reading a model's cells back out of it.

A README's table holds a column group per model; `kept_columns` reads one group back so that a
clone which recomputed only some models rewrites the table without losing the others.
"""
from __future__ import annotations

BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
SOURCE = "- `results/{preset}/numbers.json` (git {sha}{dirty})"   # a legend line per model


def split_row(line: str) -> list[str]:
    """A markdown table line -> its cells, escaped pipes kept inside their cell."""
    parts = line.strip().strip("|").replace("\\|", "\0").split("|")
    return [c.strip().replace("\0", "\\|") for c in parts]


def kept_columns(text: str, preset: str) -> dict | None:
    """A model's (ours, runs, holds?) cells per row text and its source line, read from the
    results table of a README (text), or None when the table has no column for it."""
    if BEGIN not in text or END not in text:
        return None
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    if not block or f"ours ({preset})" not in block[0]:
        return None
    col = split_row(block[0]).index(f"ours ({preset})")
    rows = {}
    for line in block[2:]:
        if not line.startswith("| "):
            break
        c = split_row(line)
        rows[c[0].replace("\\|", "|")] = [x.replace("\\|", "|") for x in c[col:col + 3]]
    prefix = SOURCE.format(preset=preset, sha="", dirty="").split(" (")[0]
    line = next((x for x in block if x.startswith(prefix)), prefix + " (not here)")
    return dict(preset=preset, rows=rows, source=line)


def splice(text: str, table: str) -> str:
    """text with everything between the BEGIN and END marker lines replaced by table."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the file needs one {BEGIN} line followed by one {END} line")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + table + END + rest.split(END, 1)[1]
