"""The README's compact results table: per claim, the paper's number and per model one short cell,
the verdict and the headline number. RESULTS.md holds the full table (analysis/readme_table.py),
with every interval, test and run count; both come from results/<preset>/numbers.json.

    python -m analysis.readme_table --preset embedded --splice RESULTS.md --compact README.md

The compact table sits between `<!-- results-summary:begin -->` and `<!-- results-summary:end -->`.
A model whose numbers.json is not here keeps its cells from the README's current table, as the
full table keeps its columns (readme_splice.kept_columns).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .readme_numbers import Numbers, Row
from .readme_splice import split_row

BEGIN, END = "<!-- results-summary:begin -->", "<!-- results-summary:end -->"


def _first_last(n: Numbers, keys: list[str]) -> str:
    return f"{n.v(keys[0])} → {n.v(keys[-1])}" if keys else "—"


def _by_number(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: int("".join(c for c in k.rsplit(".", 1)[-1] if c.isdigit())))


def _logits(n: Numbers) -> str:
    words = sorted({k.split(".")[1] for k in n.keys("logits.")})
    return "; ".join(f'"{w}" {n.v(f"logits.{w}.lowest_ce")} → {n.v(f"logits.{w}.highest")}'
                     for w in words)


def _neuron(role: str) -> Callable[[Numbers], str]:
    return lambda n: f"dream − example at its CE {n.v(f'{role}.dream_minus_dataset')}"


def _ops(condition: str) -> Callable[[Numbers], str]:
    def short(n: Numbers) -> str:
        up = [k for k in n.keys(f"ops.{condition}_vs_swap.", ".hypervolume.level")
              if n.significant(k, 1)]
        total = len(n.keys(f"ops.{condition}_vs_swap.", ".hypervolume.level"))
        return f"higher on {len(up)} of {total} neurons"
    return short


# claim -> the headline number of the model's cell (the full row is in RESULTS.md)
SHORT: dict[str, Callable[[Numbers], str]] = {
    "fluency": lambda n: f"CE at 12 tokens {n.v('fluency.ce.n12')}, SD {n.v('fluency.sd.n12')}",
    "logits": _logits,
    "six_neurons": lambda n: ", ".join(n.v(k) for k in n.keys("six_neurons.L")
                                       if not k.endswith(".max")),
    "seed_variance": lambda n: (f"max {n.v('seeds.max.min')}–{n.v('seeds.max.max')} over "
                                f"{n.n['seeds.max.median']['n']} seeds"),
    "growth": lambda n: _first_last(n, _by_number(n.keys("growth.max.it"))),
    "restarts": lambda n: (f"{n.v('restarts.everywhere')} of {n.n['restarts.everywhere']['n']} "
                           f"runs better everywhere"),
    "example_neuron": _neuron("example"),
    "sampled_neurons": lambda n: f"dream wins {n.v('sampled.wins')} of {n.n['sampled.wins']['n']}",
    "polysemantic_neuron": _neuron("polysemantic"),
    "attribution": lambda n: f"{n.v('attribution.top_tokens')} trigger token(s)",
    "residual": lambda n: (f"{n.v('residual.dream.mean')} / {n.v('residual.dataset.mean')} / "
                           f"{n.v('residual.random.mean')}"),
    "residual_limited": lambda n: (f"{n.v('residual.dream_limited.mean')} vs "
                                   f"{n.v('residual.dataset.mean')}"),
    "slack": lambda n: (f"dream CE {n.v(sorted(n.keys('residual.slack', '.xentropy.mean'))[-1])} "
                        f"vs corpus {n.v('fluency.ce.n12')}"),
    "layers": lambda n: ", ".join(n.v(k) for k in sorted(
        n.keys("residual.layer"), key=lambda k: int(k.split(".")[1][5:]))),
    "sae_latents": lambda n: f"dream wins {n.v('sae.dream_wins')} of {n.n['sae.dream_wins']['n']}",
    "sae_pre_post": lambda n: f"pre − post {n.v('sae.pre_minus_post')}",
    "sae_families": lambda n: (f"{n.v('sae.families.latent.median')} vs "
                               f"{n.v('sae.families.neuron.median')}"),
    "operators": _ops("operators"),
    "explore": _ops("explore"),
    "operators_explore": _ops("operators_explore"),
    "ops_spread": lambda n: "SD per neuron in RESULTS.md",
}


# claim -> the paper's headline (the full row in RESULTS.md quotes it whole)
PAPER: dict[str, str] = {
    "fluency": "CE at 12 tokens 3.75, SD 1.1", "logits": '" dog" −1.58 → 4.62',
    "six_neurons": "2.59, 0.22, 4.95, 3.03, 2.60, 3.02", "seed_variance": "max 2.4–10.2 over 60 seeds",
    "growth": "6.8 → 10.5", "restarts": '"typically"', "example_neuron": "+1–1.5",
    "sampled_neurons": "—", "polysemantic_neuron": "+1.7", "attribution": "several",
    "residual": "7.26 / 6.48 / 3.36", "residual_limited": "6.0 vs 6.48", "slack": "CE ≈ 4.3",
    "layers": "lowest mid-network", "companion": "—",
}


def cell(row: Row, n: Numbers) -> str:
    """One model's compact cell: the verdict, then the headline number."""
    keys = n.of_claim(row.claim)
    if not keys:
        return "not run"
    verdict = row.holds(n).split(":")[0].split(" (")[0] + n.budget(keys)
    short = SHORT.get(row.claim)
    return f"{verdict}: {short(n)}" if short else verdict


def kept(text: str, preset: str) -> dict[str, str] | None:
    """A model's compact cells by row text, read back from a README's compact table."""
    if BEGIN not in text or END not in text:
        return None
    lines = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    if not lines or preset not in split_row(lines[0]):
        return None
    col = split_row(lines[0]).index(preset)
    return {c[0]: c[col] for c in map(split_row, lines[2:]) if len(c) > col}


def columns(results: Path, text: str, models: tuple[str, ...]) -> list:
    """(preset, Numbers) for each model whose numbers.json is under `results`, else its compact
    cells kept from `text` (the README)."""
    out = []
    for preset in models:
        path = results / preset / "numbers.json"
        if path.exists():
            out.append((preset, Numbers(json.loads(path.read_text()))))
        elif (cells := kept(text, preset)) is not None:
            out.append((preset, cells))
    return out


def render(rows: tuple[Row, ...], cols: list[tuple[str, Numbers | dict]]) -> str:
    """cols: (preset, its Numbers, or its cells kept from the README), one per model column."""
    presets = [p for p, _ in cols]
    lines = ["| paper claim | paper | " + " | ".join(presets) + " |",
             "|---|---|" + "---|" * len(presets)]
    for row in rows:
        cells = [row.text, PAPER.get(row.claim, "— (proposed, §4)")]
        cells += [src.get(row.text, "not run") if isinstance(src, dict) else cell(row, src)
                  for _, src in cols]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def splice(text: str, table: str) -> str:
    """text with the compact table between its markers replaced."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the README needs one {BEGIN} line followed by one {END} line")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + table + END + rest.split(END, 1)[1]
