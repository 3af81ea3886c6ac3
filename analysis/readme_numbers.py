"""What the README results table is made of: numbers.json's entries with their formatting
(`Numbers`), a table row (`Row`), and the verdict rule shared by rows that rest on one test
(`tested`). analysis/readme_table.py holds the paper's rows and renders the table;
analysis/readme_beyond.py the rows of experiments beyond the paper."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

TABLE_1_ITERS = 300      # the paper's T (Table 1); fewer iterations mark a verdict (Numbers.budget)


class Numbers:
    """numbers.json's entries with the formatting the table uses ("5.50 [5.12, 5.88]", "p = 0.008")."""

    def __init__(self, doc: dict):
        self.doc, self.n = doc, doc["numbers"]

    def has(self, *keys: str) -> bool:
        return all(k in self.n for k in keys)

    def value(self, key: str) -> float | None:
        return self.n[key]["value"] if key in self.n else None

    def keys(self, prefix: str, suffix: str = "") -> list[str]:
        return [k for k in self.n if k.startswith(prefix) and k.endswith(suffix)]

    def v(self, key: str, digits: int = 2) -> str:
        x = self.value(key)
        return "none" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    def ci(self, key: str) -> str:
        """value [low, high] where there is an interval, else the value."""
        e = self.n.get(key, {})
        return self.v(key) + (f" [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e.get("ci") else "")

    def at(self, key: str) -> str:
        """activation @ CE of a frontier point."""
        ce = (self.n.get(key, {}).get("at") or {}).get("xentropy")
        return self.v(key) + (f" @ CE {ce:.2f}" if ce is not None else "")

    def p(self, key: str) -> str:
        """'Wilcoxon p = 0.008, r = -1.00' from the entry's test."""
        t = (self.n.get(key) or {}).get("test")
        if not t or t["p"] is None:
            return "no test (no pairs)"
        short = t["name"].split()[0]
        effect = f", r = {t['effect']:.2f}" if t["effect"] is not None else ""
        lost = f", {t['unreached']} of them unreached, counted as losses" if t.get("unreached") else ""
        return f"{short} p = {t['p']:.2g}{effect}, n = {t['n']}{lost}"

    def significant(self, key: str, sign: int) -> bool:
        """The test says p < 0.05 and its effect (the rank-biserial, which counts unreached
        units; else the difference) has the given sign."""
        t = (self.n.get(key) or {}).get("test")
        lean = t and (t["effect"] if t.get("effect") is not None else t["difference"])
        return bool(t and t["p"] is not None and t["p"] < 0.05 and (lean or 0) * sign > 0)

    def of_claim(self, claim: str) -> list[str]:
        """The keys of a claim's entries."""
        return [k for k, e in self.n.items() if e["claim"] == claim]

    def runs(self, keys: list[str]) -> int:
        return len({d for k in keys if k in self.n for d in self.n[k]["provenance"]["run_dirs"]})

    def budget(self, keys: list[str]) -> str:
        """' at T = 10' (or ' at T = 10–25') when the runs behind `keys` stopped short of Table 1's
        300 iterations, so a verdict says at what budget it was reached; '' otherwise."""
        its = sorted({i for k in keys if k in self.n
                      for i in self.n[k]["provenance"].get("iterations", [])})
        if not its or its[-1] >= TABLE_1_ITERS:
            return ""
        return f" at T = {its[0]}" + (f"–{its[-1]}" if its[-1] != its[0] else "")


@dataclass(frozen=True)
class Row:
    claim: str          # numbers.json's `claim` of the entries this row quotes
    text: str
    experiment: str     # script stem, e.g. "04_seed_variance"
    paper: str
    figure: str
    ours: Callable[[Numbers], str]
    holds: Callable[[Numbers], str]


def tested(key: str, sign: int, reverse: str) -> Callable[[Numbers], str]:
    def holds(n: Numbers) -> str:
        """yes when the test finds the claimed sign (p < 0.05), no when it finds the reverse,
        undecided otherwise."""
        if n.significant(key, sign):
            return "yes"
        return f"no: {reverse}" if n.significant(key, -sign) else "undecided: no significant difference"
    return holds
