"""Nothing of an embedded Ray cluster outlives the process that started it.

``ray.init()`` starts the GCS, the raylet, agents and workers as descendants of the driver; when
the driver is killed (``kill -9``, OOM killer) Ray's ``atexit`` shutdown never runs and they live
on. :func:`start_watchdog` starts a small separate process that records the driver's descendants
(pid and start time, so a reused pid is never touched) every half second and, once the driver is
gone, SIGKILLs every recorded process and its descendants.
"""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = r"""
import os, signal, sys, time

def tree():
    kids = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                f = open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(f[1]), []).append((int(e), f[19]))
    return kids

def descendants(roots, kids):
    out, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        for child, start in kids.get(pid, []):
            if child not in out:
                out[child] = start
                todo.append(child)
    return out

def start_of(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None

driver = int(sys.argv[1])
driver_start = start_of(driver)
seen = {}
while start_of(driver) == driver_start:
    seen.update(descendants([driver], tree()))
    seen.pop(os.getpid(), None)
    time.sleep(0.5)
for _ in range(3):  # recorded processes and whatever they started since
    live = {p: s for p, s in seen.items() if start_of(p) == s}
    live.update(descendants(list(live), tree()))
    live.pop(os.getpid(), None)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    seen = live
    time.sleep(0.2)
"""


def start_watchdog(pid: int | None = None) -> subprocess.Popen | None:
    """Watch ``pid`` (default: this process) and kill its descendants once it is gone (Linux only;
    returns None elsewhere)."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen(
        [sys.executable, "-S", "-c", _SCRIPT, str(pid or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
