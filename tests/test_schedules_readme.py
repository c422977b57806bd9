"""The README's schedule tour runs as written, and its claimed values hold."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_schedule_tour_runs():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Schedules") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert (ns["sched"](0), ns["sched"](100), ns["sched"](1000)) == (0.0, 0.1, 0.0001)
    assert ns["state"]["step"] == 1
    assert ns["wsd_like"](800) == 0.1 and ns["wsd_like"](1000) == 0.0
    assert ns["gen"](0) + ns["disc"](0) == 2e-4 + 2e-5
    assert (Path(README.parent) / "docs" / "img" / "schedules.png").exists()
