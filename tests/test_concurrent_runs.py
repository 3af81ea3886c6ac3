"""One writer per run directory (DESIGN §7, lock.py), with real processes: two dreams on one
directory (one refuses in one line, nothing lost); three sweeps on one --out (each job computed
once, all complete); a holder killed with SIGKILL never blocks, and its run resumes; a Ray sweep
beside a local one; readers list a run being written as running and keep writers out. The
sweeps and the last test run the commands of docs/runs.md (made small: the tiny model, a few
iterations)."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.runs.lock import LOCK, OWNER, RunLock, RunTaken, other_writer, reading
from fluentdream.runs import is_complete, read_json, slug

from conftest import REPO

SMALL = ["--population-size", "2", "--explore-per-pop", "4", "--topk", "16", "--seq-len", "6",
         "--wandb", "disabled", "--no-progress", "--dtype", "float32"]
REFUSED = re.compile(r"fluentdream dream: error: \S+ is being written by pid (\d+) on host \S+ "
                     r"since \d\d:\d\d \(fluentdream dream .*\); wait for it or choose another "
                     r"--run-dir")


def documented(model_dir: Path, iters: int = 3) -> list[list[str]]:
    """The commands of docs/runs.md's sh blocks (arguments after `fluentdream`), in order, made
    small: the tiny model for the embedded one (and in run names), `iters` iterations, one Ray
    worker, SMALL's settings."""
    text = (REPO / "docs" / "runs.md").read_text()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", text, re.S)
             for line in block.splitlines() if line.strip()]
    small = {"--model": str(model_dir), "--iters": str(iters), "--workers": "1"}
    commands = []
    for line in lines:
        program, *argv = shlex.split(line, comments=True)    # a "# not run: ..." note dropped
        assert program == "fluentdream", line
        argv = [small[before] if before in small else a.replace("embedded__",
                                                               f"{slug(model_dir.name)}__")
                for before, a in zip([None, *argv], argv)]
        commands.append(argv + (SMALL if argv[0] in ("dream", "sweep") else []))
    return commands


def _start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """The real `fluentdream` command in its own process."""
    return subprocess.Popen([sys.executable, "-m", "fluentdream.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, f"ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {path.name} within 120 s"
        time.sleep(0.01)


def test_two_dreams_on_one_directory_one_refuses(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "r"
    dream = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
             str(run_dir), "--iters", "30", "--checkpoint-every", "1", *SMALL]
    first = _start(*dream, "--seed", "1")
    time.sleep(0.3)
    second = _start(*dream, "--seed", "2")
    (rc1, out1, err1), (rc2, out2, err2) = _finish(first), _finish(second)
    assert sorted([rc1, rc2]) == [0, 2], (err1[-2000:], err2[-2000:])
    won, seed, out, err = (first, 1, out1, err2) if rc1 == 0 else (second, 2, out2, err1)
    line, = err.strip().splitlines()                    # the refusal: one line, no traceback
    holder = REFUSED.fullmatch(line)
    assert holder and int(holder[1]) == won.pid, line
    assert f"run saved to {run_dir}" in out
    # nothing lost and nothing mixed: every file is the survivor's run
    config, prov = read_json(run_dir / "config.json"), read_json(run_dir / "provenance.json")
    hist = fd.History.load(run_dir / "history.npz")
    assert config["seed"] == prov["seed"] == hist.meta["config"]["seed"] == seed
    assert prov["pid"] == won.pid and len(hist) == 30 and is_complete(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [LOCK, "config.json", "provenance.json", "history.npz", "frontier.json", "summary.json"])


def _computed(printed: str) -> set[str]:
    """The run directories a sweep's table says it computed itself ("done")."""
    return {Path(line.split()[1]).name for line in printed.splitlines()
            if line.startswith("done ")}


def test_three_sweeps_on_one_out_compute_each_job_once(tiny_model_dir, tmp_path, capsys,
                                                       monkeypatch):
    """docs/runs.md's sweep twice in their own processes and, once one of them holds a job,
    once in this process, all on one --out: 2 targets x 4 seeds, --batch 1."""
    sweep = documented(tiny_model_dir)[2]
    assert sweep[:1] == ["sweep"] and "--executor" not in sweep
    monkeypatch.chdir(tmp_path)
    out = tmp_path / sweep[sweep.index("--out") + 1]
    procs = [_start(*sweep, cwd=tmp_path) for _ in range(2)]
    deadline = time.monotonic() + 120
    while not list(out.glob(f"*/{OWNER}")):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
        time.sleep(0.01)
    assert main(sweep) == 0
    finished = [(os.getpid(), capsys.readouterr().out)]
    for proc in procs:
        rc, printed, err = _finish(proc)
        assert rc == 0, err[-2000:]
        finished.append((proc.pid, printed))
    dirs = sorted(out.iterdir())
    assert len(dirs) == 8 and all(is_complete(d) for d in dirs)
    computed = {}                                  # run directory -> the pid that computed it
    for pid, printed in finished:
        assert "8 of 8 jobs complete" in printed and "failed" not in printed
        for run in _computed(printed):
            assert run not in computed, f"{run} computed twice"
            computed[run] = pid
    assert sorted(computed) == [d.name for d in dirs]          # 8 computations for 8 jobs
    assert len(set(computed.values())) >= 2                    # shared, not one after another
    for d in dirs:
        assert read_json(d / "provenance.json")["pid"] == computed[d.name]
        assert not (d / "error.json").exists() and not (d / OWNER).exists()


def test_a_killed_holder_never_blocks_and_its_run_resumes(tiny_model_dir, tmp_path, capsys,
                                                          caplog):
    from analysis import build_tables

    preset = tmp_path / "preset"
    run_dir, saved = preset / "02_token_logits" / "r", preset / "02_token_logits" / "saved"
    dream = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", *SMALL]
    assert main(dream + ["--run-dir", str(saved), "--iters", "2"]) == 0
    holder = _start(*dream, "--run-dir", str(run_dir), "--iters", "100000",
                    "--checkpoint-every", "1")
    try:
        _wait_for(run_dir / "history.npz", holder)
        capsys.readouterr()
        # --resume of a run that is still running is refused like any second writer
        assert main(dream + ["--run-dir", str(run_dir), "--resume"]) == 2
        line, = capsys.readouterr().err.strip().splitlines()
        assert REFUSED.fullmatch(line) and f"pid {holder.pid} " in line, line
        with pytest.raises(RunTaken, match=f"pid {holder.pid} "):
            RunLock.acquire(run_dir)
        # readers list it as running and read only the saved run
        assert not is_complete(run_dir) and f"pid {holder.pid} " in other_writer(run_dir)
        assert main(["frontier", str(saved), str(run_dir)]) == 0
        printed = capsys.readouterr()
        assert f"running: {run_dir} (being written by pid {holder.pid} " in printed.err
        assert "from 1 runs (1 running, left out)" in printed.out
        assert "frontier_points" in build_tables.build(preset)
        assert f"running: {run_dir} (being written by pid {holder.pid} " in caplog.text
        points = pd.read_csv(preset / "tables" / "frontier_points.csv")
        assert set(points["run"]) == {"saved"}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_dir / OWNER).exists()                  # the dead holder's record stays behind
    assert other_writer(run_dir) is None               # but its lock went with it
    done = len(fd.History.load(run_dir / "history.npz"))
    assert main(dream + ["--run-dir", str(run_dir), "--resume", "--iters", str(done + 2)]) == 0
    prov = read_json(run_dir / "provenance.json")
    assert prov["resumed_from_iteration"] == done and prov["pid"] == os.getpid()
    assert is_complete(run_dir) and not (run_dir / OWNER).exists()


def test_a_writer_waits_for_readers_then_writes(tiny_lm, tmp_path):
    """A saved run that a reader (this process) holds is not rewritten until the reader lets
    go: a writer in another process waits, saying so, then takes the directory."""
    from fluentdream.runs import run_dream

    target = fd.parse_target("L1.N5", tiny_lm)
    cfg = fd.EPOConfig(iters=1, population_size=2, explore_per_pop=4, topk=16)
    run_dir = run_dream(tiny_lm, target, cfg, tmp_path / "r").run_dir
    script = ("import sys; from fluentdream.runs.lock import RunLock; "
              "RunLock.acquire(sys.argv[1]).release(); print('written')")
    with reading([run_dir]) as running:
        assert running == {}
        writer = subprocess.Popen([sys.executable, "-c", script, str(run_dir)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = writer.stderr.readline()               # blocks until the writer has waited
        assert f"waiting for readers of {run_dir}" in said, said + writer.communicate()[1]
        assert writer.poll() is None                  # still waiting while the reader holds
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out == "written\n", err


def test_a_ray_sweep_beside_a_local_sweep(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """docs/runs.md's Ray sweep (one worker) in this process, its local sweep in another."""
    ray = pytest.importorskip("ray")
    commands = documented(tiny_model_dir)
    local, on_ray = commands[2], commands[3]
    assert on_ray[on_ray.index("--executor") + 1] == "ray"
    monkeypatch.chdir(tmp_path)
    proc = _start(*local, cwd=tmp_path)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert main(on_ray) == 0
    finally:
        ray.shutdown()
    rc, printed, err = _finish(proc)
    assert rc == 0, err[-2000:]
    by_ray, by_local = _computed(capsys.readouterr().out), _computed(printed)
    out = tmp_path / local[local.index("--out") + 1]
    assert not by_ray & by_local                           # no job computed twice
    assert by_ray | by_local == {d.name for d in out.iterdir()}
    assert len(by_ray | by_local) == 8 and all(is_complete(d) for d in out.iterdir())
    for d in out.iterdir():                                # each run names its computer
        assert (read_json(d / "provenance.json")["pid"] == proc.pid) == (d.name in by_local)


def test_the_other_commands_of_docs_runs_md(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """dream, its --resume, a sweep and the frontier of two of its runs, in order."""
    monkeypatch.chdir(tmp_path)
    dream, resume, sweep, _, frontier = documented(tiny_model_dir, iters=2)
    assert main(dream) == 0 and main(resume) == 0
    assert "is already complete (2 iterations); nothing to resume" in capsys.readouterr().out
    assert main(sweep) == 0 and main(frontier) == 0
    assert "frontier points from 2 runs" in capsys.readouterr().out
