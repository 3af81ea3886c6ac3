"""The module paths of fluentdream 0.1 (before the subpackages of issue 33) still import for one
release, each with a DeprecationWarning naming where its contents went; CHANGELOG.md lists them."""
from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

import fluentdream as fd
from fluentdream.moved import MOVED

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def import_old(name: str):
    """Import fluentdream.<name> afresh; return it and the warnings it gave."""
    sys.modules.pop(f"fluentdream.{name}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"fluentdream.{name}")
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_with_a_warning_naming_its_homes(old):
    module, warned = import_old(old)
    homes = [importlib.import_module(f"fluentdream.{h}") for h in MOVED[old]]
    assert len(warned) == 1 and warned[0].filename == __file__
    assert all(f"fluentdream.{h}" in str(warned[0].message) for h in MOVED[old])
    if len(homes) == 1:
        assert module is homes[0]           # the module itself: patching it reaches the code
        assert module.__spec__.name == homes[0].__name__
    names = {k for home in homes for k in vars(home) if not k.startswith("_")}
    assert all(getattr(module, k) is getattr(next(h for h in homes if hasattr(h, k)), k)
               for k in names)                  # a name of several homes: the first one's


def test_names_users_import_from_old_paths():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fluentdream.checks import check_device, check_prompt_length, writable_dir
        from fluentdream.epo import IterationReport, check_run, epo, initial_prompts, mutate, restart
        from fluentdream.evaluate import Memo, Scorer, xentropy
        from fluentdream.history import History, atomic_write
        from fluentdream.runfiles import read_json, write_json
    from fluentdream.core.steps import restart as new_restart
    assert (Scorer, xentropy, epo, History, IterationReport) == (fd.Scorer, fd.xentropy, fd.epo,
                                                                 fd.History, fd.IterationReport)
    assert restart is new_restart and callable(mutate) and callable(initial_prompts)
    assert all(map(callable, (check_device, check_prompt_length, writable_dir, check_run, Memo,
                              atomic_write, read_json, write_json)))


def test_old_paths_leave_the_public_api_as_it_was():
    """`import fluentdream.epo` names a module `epo` on the package; fd.epo stays the function,
    fd.batched and fd.attribution the modules; fd.<old> reaches the old paths too."""
    import_old("epo")
    import_old("batched")
    assert callable(fd.epo) and fd.epo.__module__ == "fluentdream.core.epo"
    assert fd.batched.epo_many and fd.attribution.to_html
    with pytest.warns(DeprecationWarning, match="fluentdream.core.tokens"):
        sys.modules.pop("fluentdream.tokens", None)
        fd.__dict__.pop("tokens", None)
        assert fd.tokens.allowed_tokens is importlib.import_module("fluentdream.core.tokens").allowed_tokens
    with pytest.raises(AttributeError):
        fd.no_such_module


def test_packages_that_kept_an_old_name_export_what_it_had():
    """fluentdream.models, .targets, .runs and .cli were modules; as packages they export the
    public names the modules defined (cli: those meant for callers)."""
    kept = dict(
        models="ARCHITECTURES Arch DTYPES EMBEDDED_DIR LoadedModel SMOLLM2 check_architecture "
               "default_device dense_checkpoint find_gguf gguf_source keep_freed_memory "
               "load_model max_positions smollm2_gguf wrap_model",
        targets="AttentionEntry CustomTarget Logit Neuron ResidualDirection SAE SAELatent Target "
                "load_sae parse_target",
        runs="CE_THRESHOLDS CHECKPOINT FRONTIER_REF MakeTracker PACKAGES RunResult RunSpec Tracker "
             "config_diff dream_many git_info is_complete load_checkpoint load_run "
             "merged_frontier open_run provenance read_json run_config run_dir_for run_dream "
             "run_many same_complete_run save_history save_run slug summary with_post write_json",
        cli="build_parser config_from_args main operators_arg")
    for package, names in kept.items():
        module = importlib.import_module(f"fluentdream.{package}")
        assert [n for n in names.split() if not hasattr(module, n)] == [], package
    assert fd.models.load_model is fd.load_model and fd.targets.parse_target is fd.parse_target


def test_the_changelog_lists_every_move():
    text = CHANGELOG.read_text()
    for old, homes in MOVED.items():
        line = next((l for l in text.splitlines() if f"`fluentdream.{old}`" in l), "")
        assert line and all(f"fluentdream.{h}" in line for h in homes), old
