"""The module paths of fluentdream 0.1, before its subpackages, kept working for one release.

    import fluentdream.evaluate          # DeprecationWarning: now fluentdream.core.scoring.scorer, ...
    from fluentdream.tokens import allowed_tokens     # works, with the warning

CHANGELOG.md lists every move. An old path that became one module gives that very module, so
monkeypatching through it still reaches the code; an old module that was split gives a module
holding the names of all its new homes (a copy: patch the new modules instead). fluentdream.models,
.targets, .runs and .cli are packages now and still export their old public names, so they
need no alias. `install` runs once, from fluentdream/__init__.py.

Imports nothing of fluentdream at import time; the new homes are imported by name when an old
path is first imported.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

# old module (under fluentdream) -> its new homes, the first holding most of it
MOVED: dict[str, tuple[str, ...]] = {
    "attribution": ("core.attribution",),
    "batched": ("core.batched",),
    "calibration": ("data.calibration",),
    "checks": ("core.checks", "models.hardware", "files"),
    "cli_errors": ("cli.errors",),
    "cli_mine": ("cli.mine",),
    "config": ("core.config",),
    "context": ("core.context",),
    "corpus": ("data.corpus",),
    "distributed": ("runs.distributed",),
    "epo": ("core.epo", "core.steps", "core.batched", "core.checks", "core.operators"),
    "evaluate": ("core.scoring.scorer", "core.scoring.forward", "core.scoring.memo",
                 "core.scoring.chunks", "core.scoring.packed_scoring"),
    "features": ("data.features",),
    "frontier": ("core.frontier",),
    "gguf_cache": ("models.gguf",),
    "gradients": ("core.scoring.gradients",),
    "hardware": ("models.hardware",),
    "history": ("core.history", "files"),
    "hooks": ("core.scoring.hooks",),
    "jobs": ("runs.jobs",),
    "lock": ("runs.lock",),
    "mining": ("data.mining",),
    "operators": ("core.operators",),
    "packed": ("core.scoring.packed",),
    "progress": ("core.progress",),
    "ragged": ("core.ragged",),
    "runfiles": ("runs.files", "files"),
    "sae": ("targets.sae",),
    "session": ("runs.session",),
    "tokens": ("core.tokens",),
    "tracking": ("runs.tracking",),
}
PACKAGE = __name__.rpartition(".")[0]


def _homes(old: str) -> list[types.ModuleType]:
    return [importlib.import_module(f"{PACKAGE}.{home}") for home in MOVED[old]]


def _warn(old: str) -> None:
    homes = ", ".join(f"{PACKAGE}.{home}" for home in MOVED[old])
    warnings.warn(f"{PACKAGE}.{old} has moved to {homes}; import from there (CHANGELOG.md). "
                  "The old path goes in the next release.", DeprecationWarning,
                  stacklevel=_importing_line())


def _importing_line() -> int:
    """The stacklevel at which warnings.warn, called from _warn, names the line that imported
    the old path: past this module's frames and importlib's (warnings itself passes over the
    import system's frozen frames, so they are not counted)."""
    level, frame = 1, sys._getframe(2)         # level 1: _warn, the caller of warnings.warn
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            if name != __file__ and not name.endswith("importlib/__init__.py"):
                return level + 1
            level += 1
        frame = frame.f_back
    return 1


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `fluentdream.<old>` after every real finder failed (it is last on sys.meta_path)."""

    def find_spec(self, name: str, path=None, target=None):
        package, _, old = name.rpartition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        old = spec.name.rpartition(".")[2]
        homes = _homes(old)
        if len(homes) > 1:
            return None                   # a fresh module; exec_module fills it
        module = homes[0]
        spec.loader_state = module.__spec__    # the import system sets spec on the module
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        old = spec.name.rpartition(".")[2]
        if spec.loader_state is not None:
            module.__spec__ = spec.loader_state      # the real module keeps its own spec
        else:
            for home in reversed(_homes(old)):       # the first home wins a shared name
                module.__dict__.update({k: v for k, v in vars(home).items()
                                        if not k.startswith("__")})
        _warn(old)


class _Package(types.ModuleType):
    """The fluentdream package: `fd.<old>` attribute access reaches the old paths too, and the
    import system, which names a loaded submodule on its package, cannot replace a function of
    the API with an old module of the same name (`import fluentdream.epo` leaves fd.epo)."""

    def __getattr__(self, name: str):
        if name in MOVED:
            return importlib.import_module(f"{self.__name__}.{name}")
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        held = self.__dict__.get(name)
        if (name in MOVED and isinstance(value, types.ModuleType) and held is not None
                and not isinstance(held, types.ModuleType)):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    """Make the old module paths of `package` (fluentdream) importable, once."""
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
    package.__class__ = _Package
