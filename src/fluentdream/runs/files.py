"""The files of a run directory (runs.store): reading its JSON, the checkpoint, and the comparison
of a saved config.json with a requested one. A damaged or missing file raises fd.UserError naming
it; an OSError while writing names the file it stopped (a full disk, cli.commands). Writing JSON
atomically is fluentdream.files.write_json.

    read_json(run_dir / "config.json")
    hist = load_checkpoint(run_dir / CHECKPOINT)
    config_diff(read_json(run_dir / "config.json"), requested)   # ["topk (saved 32, requested 16)"]
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

from ..core.config import EPOConfig
from ..core.history import History
from ..errors import UserError
from ..files import naming
from .lock import other_writer

CHECKPOINT = "history.npz"
# run_config keys that may differ between a run and its resumption
NOT_COMPARED = ("extra", "checkpoint_every", "frontier_ref_xentropy", "frontier_ref_target")


def is_complete(run_dir: Path) -> bool:
    """Whether run_dir holds a saved run: summary.json, written last, is there and no other
    process is writing the directory (a run being extended is unfinished until it is saved)."""
    return (Path(run_dir) / "summary.json").exists() and other_writer(run_dir) is None


def read_json(path: Path) -> dict:
    """A JSON file of a run or results directory; a missing or damaged one raises UserError
    naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing (is {Path(path).parent} a fluentdream run or results "
                        "directory, copied whole?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged (not valid JSON: {e}); restore it or remove the run "
                        "directory") from None


def load_checkpoint(path: Path) -> History:
    """History.load, with a damaged or truncated file (a copy cut short, a full disk) raising
    UserError naming it."""
    try:
        return History.load(path)
    except UserError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError) as e:
        raise UserError(f"{path} is damaged or truncated ({type(e).__name__}: {e}); it cannot "
                        "be resumed: move it away and start the run again") from None


def config_diff(saved: dict, config: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings in which a saved run's config.json differs from a requested config. An
    EPOConfig field missing from an older config.json (added since, e.g. operators) held its
    default, which reproduces what ran before the field existed."""
    saved = {**{k: v for k, v in EPOConfig().to_dict().items() if k in config}, **saved}
    keys = sorted((set(saved) | set(config)) - set(NOT_COMPARED) - set(ignore))
    return [f"{k} (saved {saved.get(k)!r}, requested {config.get(k)!r})"
            for k in keys if saved.get(k) != config.get(k)]


def same_complete_run(run_dir: Path, config: dict) -> bool:
    """True when run_dir holds a finished run of exactly this config (reuse it); False when it
    holds no finished run. A finished run made with other settings raises UserError: reusing it
    would pass stale results off as new ones."""
    if not is_complete(run_dir):
        return False
    diff = config_diff(read_json(Path(run_dir) / "config.json"), config)
    if diff:
        raise UserError(f"{run_dir} holds a finished run made with other settings: "
                        f"{'; '.join(diff)}; choose another output directory, or extend it with "
                        "more iterations (dream --resume --iters N)")
    return True


def save_history(hist: History, path: Path) -> None:
    """hist.save, naming the file in an OSError."""
    with naming(path):
        hist.save(path)
