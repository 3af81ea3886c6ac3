"""BENCHMARKS.md is written by several scripts, each owning its sections. `replace_section` swaps
one section in place and keeps the file in one order, whatever order the scripts ran in: what a
user waits for first (one dream's wall time against the reference, issue 29), then what explains
it (the settings' pilot, the ablation at equal iterations and equal CPU time), then where the
time of an iteration goes. A section whose heading is not in ORDER goes last."""
from __future__ import annotations

from pathlib import Path

from fluentdream.files import atomic_write

ORDER = (
    "## Time to quality against the reference implementation",        # time_to_quality.py
    "## Best settings for time to quality",                           # its pilot
    "## Ablation against the reference",                              # ablation.py
    "## Single runs to the reference's frontier in CPU seconds",      # ablation_latency.py
    "## Speed per iteration against the plain algorithm",             # run.py
    "## Where the time goes, and what limits the rest",               # run.py, from LIMITS.md
    "## GPU",                                                         # LIMITS.md
    "## Where an iteration's time goes on a real model",              # phases.py
)

HEADER = ("# Benchmarks\n\nEach section names the command that wrote it; `make bench` runs them "
          "all (with REFERENCE=PATH for the sections against the reference code).\n")


def split(text: str) -> tuple[str, list[str]]:
    """A markdown file -> (what precedes its first '## ' heading, [each '## ' section])."""
    parts = ("\n" + text).split("\n## ")
    return parts[0].lstrip("\n"), ["## " + p.rstrip("\n") + "\n" for p in parts[1:]]


def rank(section: str) -> int:
    return next((i for i, h in enumerate(ORDER) if section.startswith(h)), len(ORDER))


def replace_section(path: Path, heading: str, body: str) -> None:
    """Put `body` (a section starting with `heading`) in the markdown file at `path`: in place of
    the section that starts with `heading`, or where ORDER puts it; the others are left as they
    are (sections of one kind keep their order among themselves)."""
    header, sections = split(path.read_text() if path.exists() else "")
    body = body.strip("\n") + "\n"
    at = next((i for i, s in enumerate(sections) if s.startswith(heading)), None)
    if at is None:
        sections.append(body)
    else:
        sections[at] = body
    sections.sort(key=rank)                                     # stable: one kind keeps its order
    text = (header.rstrip("\n") or HEADER.rstrip("\n")) + "\n\n" + "\n".join(sections)
    atomic_write(Path(path), lambda fh: fh.write(text.encode()))
