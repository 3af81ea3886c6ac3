"""The Python API shows progress on long work and documents itself (issue: trust)."""
from __future__ import annotations

import pydoc

import fluentdream as fd

CFG = fd.EPOConfig(population_size=2, explore_per_pop=4, topk=16, seq_len=6, iters=3)


def test_epo_progress_bar_on_request_and_silent_otherwise(tiny_lm, capsys):
    target = fd.Neuron(1, 5)
    fd.epo(tiny_lm, target, CFG, progress=True)
    err = capsys.readouterr().err
    assert "L1.N5" in err and "3/3" in err and "best=" in err
    fd.epo(tiny_lm, target, CFG, progress=False)
    fd.epo(tiny_lm, target, CFG)          # stderr is not a terminal here: no bar by default
    assert capsys.readouterr().err == ""


def test_help_of_epo_describes_arguments_callback_and_return():
    text = pydoc.render_doc(fd.epo)
    for word in ("callback", "IterationReport", "resume", "fluency", "progress", "Returns",
                 "ids (T, P, n)", "UserError"):
        assert word in text, word
