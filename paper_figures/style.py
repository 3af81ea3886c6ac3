"""Shared look of every paper figure: rcParams, colours, atomic saving, a table-loading main.

    from paper_figures import style
    fig = style.figure(2, 1)            # a Figure with the shared rcParams (Agg backend)
    style.save(fig, "paper_figures/out/fig2_seed_variance.png")
    tables = style.read_tables(Path("results/embedded/tables"))   # name -> DataFrame
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fluentdream.files import atomic_write  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DPI = 150
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
PAPER = "#888888"       # reference values taken from the paper
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.prop_cycle": matplotlib.cycler(color=COLOURS),
      "figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight"}


def figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0, **kwargs):
    """(fig, axes) with the shared style; width and height in inches for the whole figure."""
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)
    return fig, axes


def save(fig, path: str | Path) -> Path:
    """Write the figure atomically (format from the suffix) and close it."""
    path = Path(path)
    with plt.rc_context(RC):
        atomic_write(path, lambda fh: fig.savefig(fh, format=path.suffix.lstrip(".")))
    plt.close(fig)
    return path


def write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(text.encode()))
    return path


def read_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Every NAME.csv of a tables folder (analysis/build_tables.py output) as name -> DataFrame."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"tables folder {folder} does not exist; run analysis/build_tables.py")
    return {p.stem: pd.read_csv(p, keep_default_na=False, na_values=[""])
            for p in sorted(folder.glob("*.csv"))}


def parse_args(argv, description: str) -> argparse.Namespace:
    """The few-line main of every figure module: --tables DIR --out DIR."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tables", type=Path, default=Path("results/embedded/tables"))
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def shorten(text: str, width: int = 40) -> str:
    """A prompt as one printable line for a label: escapes shown, ellipsis when cut."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= width else shown[:width - 1] + "…"


def md_cell(text: str) -> str:
    """Text as a markdown table cell: a code span, escapes visible, pipes escaped."""
    return "`` " + repr(str(text))[1:-1].replace("|", "\\|") + " ``"


def require(tables: dict[str, pd.DataFrame], name: str, experiment: str) -> pd.DataFrame:
    """tables[name], or a ValueError naming the experiment that makes it."""
    if name not in tables or tables[name].empty:
        raise ValueError(f"table {name!r} is missing; run experiments/{experiment}.py and "
                         "analysis/build_tables.py first")
    return tables[name]
