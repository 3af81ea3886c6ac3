"""Every command in README.md and docs/*.md runs, so none can rot: each fenced ```bash block's
commands in one scratch folder per page (in order, so a later command can read what an earlier
one wrote), each ```python block as a script there.

    make TARGET ...       make -n in the repository (the pipeline resolves; nothing runs)
    python ...            in the repository, whose scripts the docs name
    git clone, pip, cd    skipped: they need the network, or change nothing here
    anything else         through bash in the scratch folder (fluentdream ..., for real)
A command that must not run here (a GPU, the hub) says so in a `# not run: why` comment on its
line (a Python block: anywhere in it); the test counts those, so they stay few and visible.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run:"
SKIP = ("git clone", "pip install", "cd ")


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(page.read_text())
            if lang in ("bash", "sh", "python")]


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    out, line = [], ""
    for raw in body.splitlines():
        line += raw.rstrip()
        if line.endswith("\\"):
            line = line[:-1] + " "
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
        line = ""
    return out


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
                PYTHONPATH=str(REPO))


def run_command(cmd: str, cwd: Path) -> subprocess.CompletedProcess | None:
    """One command through bash, as a user types it, or None when it is not run here."""
    if NOT_RUN in cmd or cmd.startswith(SKIP):
        return None
    if cmd.startswith("make "):                    # the pipeline resolves; nothing runs
        cmd, cwd = "make -n" + cmd[4:], REPO
    elif cmd.startswith("python "):                # scripts are the repository's
        cmd, cwd = shlex.quote(sys.executable) + cmd[6:], REPO
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_command_on_the_page_runs(page, tmp_path):
    ran = held = 0
    for lang, body in blocks(page):
        if lang == "python":
            if NOT_RUN in body:
                held += 1
                continue
            script = tmp_path / f"block{ran}.py"
            script.write_text(body)
            res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env(),
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{page.name}:\n{body}\n{res.stderr[-3000:]}"
            ran += 1
            continue
        for cmd in commands(body):
            res = run_command(cmd, tmp_path)
            held += res is None
            if res is not None:
                assert res.returncode == 0, f"{page.name}: {cmd}\n{res.stdout[-2000:]}{res.stderr[-3000:]}"
                ran += 1
    assert ran + held or not blocks(page), f"{page.name}: code blocks but no command"


def test_commands_that_are_not_run_are_few_and_say_why():
    held = [line for page in PAGES for _, body in blocks(page) for line in body.splitlines()
            if NOT_RUN in line]
    assert all(len(line.split(NOT_RUN, 1)[1].strip()) > 3 for line in held)
    assert len(held) <= 10, held
