"""Every code block of README.md runs as written: each ```python block is executed in a fresh namespace,
and the cheap ``distsched`` commands of the plain ``` blocks (schedule, plan, epsilon) are run.

A block that needs a cluster or minutes carries an HTML comment on the line before its fence:
``<!-- test: slow -->`` (run by ``make test-slow``) or ``<!-- test: skip REASON -->``. Blocks run in a
temporary folder in which ``examples/`` is the repository's, so relative paths work and nothing is
written into the checkout.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([A-Za-z]*)\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"^<!--\s*test:\s*(slow|skip)\b\s*(.*?)\s*-->$")
#: commands of the shell blocks that are cheap enough to run in the default suite
CHEAP = ("schedule", "plan", "epsilon")


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: tuple[str, str] | None  # ("slow" | "skip", reason)
    section: str = ""  # the "## " heading the block sits under


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with the test marker on the line before each fence, if any."""
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.match(before)
        if before.startswith("<!--") and "test:" in before and marker is None:
            raise ValueError(f"README.md:{text.count(chr(10), 0, m.start()) + 1}: malformed test marker {before!r}")
        headings = re.findall(r"^## (.+)$", text[: m.start()], re.M)
        out.append(Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1,
                         (marker.group(1), marker.group(2)) if marker else None, headings[-1] if headings else ""))
    return out


def _commands(code: str) -> list[list[str]]:
    """``distsched <cheap command> ...`` lines (continuations joined, comments and ``[optional]`` parts
    dropped) as argv lists."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(re.sub(r"\[[^\]]*\]", " ", line), comments=True)
        if len(words) > 1 and words[0] == "distsched" and words[1] in CHEAP:
            out.append(words[1:])
    return out


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _schedule_tour(ns: dict) -> None:
    """The values the tour's comments claim."""
    assert (ns["sched"](0), ns["sched"](100), ns["sched"](1000)) == (0.0, 0.1, 0.0001)
    assert ns["state"]["step"] == 1
    assert ns["wsd_like"](800) == 0.1 and ns["wsd_like"](1000) == 0.0
    assert ns["gen"](0) + ns["disc"](0) == 2e-4 + 2e-5
    assert (ROOT / "docs" / "img" / "schedules.png").exists()


def _local_sgd(ns: dict) -> None:
    assert ns["engine"].rounds == 27 and ns["engine"].bytes_sent == 0  # "27 rounds instead of 500", one worker


#: section -> the check of the claims made by that section's first python block
CHECKS = {"Schedules": _schedule_tour, "Local SGD": _local_sgd}


def _params(kind: str) -> list:
    params = []
    seen: set[str] = set()
    for b in BLOCKS:
        if kind == "python" and b.lang == "python":
            check = CHECKS.get(b.section) if b.section not in seen else None
            seen.add(b.section)
            items = [(f"README.md:{b.line}", (b.code, check))]
        elif kind == "shell" and b.lang == "":
            items = [(f"README.md:{b.line}:{argv[0]}{i}", argv) for i, argv in enumerate(_commands(b.code))]
        else:
            continue
        marks = []
        if b.marker and b.marker[0] == "slow":
            marks.append(pytest.mark.slow)
        elif b.marker:
            marks.append(pytest.mark.skip(reason=f"README.md:{b.line}: {b.marker[1] or 'marked skip'}"))
        params += [pytest.param(value, id=name, marks=marks) for name, value in items]
    return params


@pytest.fixture
def in_scratch(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return tmp_path


@pytest.mark.parametrize("block", _params("python"))
def test_python_block_runs_as_written(block, in_scratch):
    code, check = block
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), ns)
    if check is not None:
        check(ns)


@pytest.mark.parametrize("argv", _params("shell"))
def test_cheap_shell_command_runs(argv, in_scratch, capsys):
    from distsched.cli import main

    assert main(argv) == 0, capsys.readouterr().err


def test_most_blocks_run_and_markers_are_read():
    python = [b for b in BLOCKS if b.lang == "python"]
    skipped = [b for b in python if b.marker and b.marker[0] == "skip"]
    assert len(python) >= 5 and len(skipped) <= len(python) // 4, [b.line for b in skipped]
    assert {b.section for b in python} >= set(CHECKS)
    assert sum(len(_commands(b.code)) for b in BLOCKS if b.lang == "") >= 5
    text = "x\n<!-- test: skip needs a GPU -->\n```python\n1\n```\n\n```\ndistsched schedule --list\n```\n"
    assert [(b.lang, b.marker, b.line) for b in readme_blocks(text)] == [
        ("python", ("skip", "needs a GPU"), 3), ("", None, 7)]
    with pytest.raises(ValueError, match="malformed test marker"):
        readme_blocks("<!-- test: later -->\n```python\n1\n```\n")
    assert _commands("distsched plan --a 1 \\\n    --b 2 [--json]  # comment\ndistsched train x.yaml\n") == [
        ["plan", "--a", "1", "--b", "2"]]
