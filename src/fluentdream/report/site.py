"""The site: one page per target and an index, written whole or not at all.

    site = report(["results/embedded"], "site", mine=["results/embedded/05_dream_vs_dataset/mining"])
    site.index, site.pages, site.left_out      # site/index.html, site/targets/*.html, [(dir, why)]
    read_page("site/targets/embedded__L1.N5.html")["frontier"][0]["text"]

Every page is one HTML file holding its data as JSON (<script type="application/json"
id="data">), the script that draws it and its style, all inline: no request leaves the page, and
its Content-Security-Policy forbids any (a browser refuses to load anything from elsewhere). The
script and style are page.js (helpers, the index), target.js (a target's panels) and page.css
beside this module, written for this project. The site is built in a temporary folder beside `out` and renamed into place, so a reader never sees half
a site and an error leaves the old one as it was.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from ..files import umask, writable_dir
from ..provenance import __version__
from ..runs import read_json, slug
from .collect import collect, find_runs
from .mined import read_mines
from .pages import Limit, index_row, target_page

GENERATOR = f"fluentdream {__version__} report"
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:")
DATA = re.compile(r'<script type="application/json" id="data">(.*?)</script>', re.S)


@dataclass
class Site:
    """What report() wrote: the index, one page per target, how many runs they show, and the
    runs left out with the reason why."""
    index: Path
    pages: list[Path]
    runs: int
    left_out: list[tuple[Path, str]]


def report(runs: Iterable[str | os.PathLike], out: str | os.PathLike,
           mine: Iterable[str | os.PathLike] = (), in_distribution: float | str | None = None,
           lm=None, model: bool = True, attribution_k: int = 32,
           progress: bool | None = None) -> Site:
    """Pages of every target among `runs` (run directories, or folders searched for them):
    `out`/index.html and `out`/targets/<model>__<target>.html. `mine`: folders of `fluentdream
    mine` whose examples go beside the dreams. `in_distribution`: the CE limit marked on every
    page, a number or a JSON file holding `in_distribution` (experiment 01's thresholds.json) or
    `threshold`; default: each run's frontier CE limit. `lm`: a loaded model to use for runs of
    its name (others load by name, in their runs' dtype); model=False leaves out what needs one
    (attribution, token shading, logit effects). Runs being written, unfinished or unreadable
    are left out and listed in `left_out`; a bad path, mine or output folder raises UserError
    before anything is written."""
    if attribution_k < 1:
        raise UserError(f"attribution k must be >= 1, got {attribution_k}")
    dirs = find_runs([Path(r) for r in runs])
    mines = read_mines([Path(m) for m in mine])
    limit = read_limit(in_distribution)
    out = _check_out(Path(out))
    groups, left_out = collect(dirs)
    if not groups:
        d, why = left_out[0]
        raise UserError(f"nothing to report: every run was left out ({d}: {why})")
    models = _Models(lm, model)
    pages, names = {}, set()
    # progress in frontier points: attributing them is most of the work
    with _bar(progress, sum(len(g.merged) for g in groups)) as bar:
        for g in groups:
            name = _unique(slug(f"{Path(g.config['model']).name}__{g.config['target']}"), names)
            pages[f"targets/{name}.html"] = target_page(g, mines, models.get(g.config), limit,
                                                        attribution_k)
            bar.update(len(g.merged))
    index = dict(page="index", generator=GENERATOR, rows=[index_row(d, h) for h, d in pages.items()],
                 left_out=[[str(d), why] for d, why in left_out],
                 mines=[m.label() for m in mines],
                 in_distribution=dict(value=limit.value, source=limit.source))
    _write(out, {"index.html": render(index, "fluentdream report"),
                 **{h: render(d, f"{d['target']} · fluentdream") for h, d in pages.items()}})
    return Site(out / "index.html", [out / h for h in pages], sum(len(g.runs) for g in groups),
                left_out)


def read_limit(value: float | str | None) -> Limit:
    """--in-distribution: a number, or a JSON file with `in_distribution` or `threshold`."""
    if value is None:
        return Limit(None, "")
    try:
        number = float(value)
    except ValueError:
        return _limit_file(Path(value))
    if not math.isfinite(number):
        raise UserError(f"--in-distribution must be a finite CE, got {value!r}")
    return Limit(number, "--in-distribution")


def _limit_file(path: Path) -> Limit:
    if not path.is_file():
        raise UserError(f"--in-distribution {str(path)!r} is neither a number nor a JSON file")
    found = read_json(path)
    number = found.get("in_distribution", found.get("threshold")) if isinstance(found, dict) else None
    if not isinstance(number, (int, float)) or not math.isfinite(number):
        raise UserError(f"--in-distribution {path}: holds no number under in_distribution or "
                        "threshold (experiment 01's thresholds.json does)")
    return Limit(float(number), str(path))


class _Models:
    """Models by name and dtype, each loaded once; `lm` used for runs of its name."""

    def __init__(self, lm, enabled: bool):
        self.lm, self.enabled, self.loaded = lm, enabled, {}

    def get(self, config: dict):
        name = config["model"]
        if not self.enabled:
            return None
        if self.lm is not None and self.lm.name == name:
            return self.lm
        key = (name, config.get("dtype"))
        if key not in self.loaded:
            from ..models.load import load_model
            try:
                self.loaded[key] = load_model(name, dtype=config.get("dtype"))
            except (UserError, OSError, ValueError) as e:
                raise UserError(f"cannot load model {name!r} for the report ({str(e).splitlines()[0]}); "
                                "report without it: --no-model") from None
        return self.loaded[key]


def _bar(progress: bool | None, total: int):
    from tqdm.auto import tqdm

    from ..core.progress import interactive
    return tqdm(total=total, desc="report", unit="point",
                disable=not (interactive() if progress is None else progress))


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    taken.add(out)
    return out


def _check_out(out: Path) -> Path:
    """`out` may be new, empty, or a report made before (replaced whole); anything else is
    refused, so a mistyped --out never replaces a folder of other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out / "index.html"):
        raise UserError(f"--out {out} holds other files (no report's index.html); give a new or "
                        "empty folder, or a report made before")
    writable_dir(out.parent)
    return out


def _is_report(index: Path) -> bool:
    try:
        return f'name="generator" content="fluentdream' in index.read_text(errors="replace")[:2000]
    except OSError:
        return False


def _write(out: Path, files: dict[str, str]) -> None:
    """Write the site into a fresh folder beside `out`, then put it in `out`'s place."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())          # mkdtemp's 0700 would hide the site from others
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "site")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def render(data: dict, title: str) -> str:
    """One page: its data as JSON (floats to 6 significant digits, `<` escaped so no text can
    close the script element), then the project's style and script."""
    payload = json.dumps(_compact(data), ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c")
    esc = title.replace("&", "&amp;").replace("<", "&lt;")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="generator" content="{GENERATOR}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{esc}</title>\n<style>{_asset("page.css")}</style></head>\n'
            f'<body><main id="app"><noscript>This page draws itself with JavaScript; its data is '
            f'in the script element "data".</noscript></main>\n<div id="tip" hidden></div>\n'
            f'<script type="application/json" id="data">{payload}</script>\n'
            f'<script>{_asset("page.js")}</script>\n'
            + (f'<script>{_asset("target.js")}</script>\n' if data["page"] == "target" else "")
            + '</body></html>\n')


def _compact(x):
    """JSON values with floats rounded to 6 significant digits, and NaN or inf as null."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _compact(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_compact(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):   # numpy scalars
        return _compact(x.item())
    return x


def read_page(path: str | os.PathLike) -> dict:
    """A page's embedded data, as the page itself reads it."""
    text = Path(path).read_text(encoding="utf-8")
    m = DATA.search(text)
    if m is None:
        raise UserError(f"{path} is not a fluentdream report page (no embedded data)")
    return json.loads(m.group(1))
