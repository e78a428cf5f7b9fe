"""The watchdog: a backend that overruns its time limit is killed, and the solve
returns its incumbent with the proven gap within the limit plus a small margin."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from solver_random import contested_problem

from solver import milp
from solver.ilp import solve
from solver.watchdog import CAN_FORK, Overrun, call_with_deadline

pytestmark = pytest.mark.skipif(not CAN_FORK, reason="the watchdog needs os.fork")


def _sleep_in_subprocess(pid_file: str) -> None:
    # like CBC: the work happens in a process the child started
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as f:
        f.write(str(proc.pid))
    proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_call_that_finishes_returns_its_value():
    assert call_with_deadline(sum, [1, 2, 3], seconds=30) == 6


def test_an_exception_in_the_child_is_raised_here():
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(divmod, 1, 0, seconds=30)


def test_an_overrun_is_killed_with_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(Overrun):
        call_with_deadline(_sleep_in_subprocess, str(pid_file), seconds=1.0)
    assert time.monotonic() - start < 3.0
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # init reaps it once killed
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_stuck_backend_gives_the_incumbent_within_the_limit(monkeypatch):
    def stuck(*args, **kwargs):
        time.sleep(60)

    monkeypatch.setattr(milp, "_solve_core", stuck)
    monkeypatch.setattr(milp, "INLINE_VARIABLES", 0)  # small programs run inline otherwise
    problem = contested_problem()
    start = time.monotonic()
    allocation = solve(problem, time_limit_s=1.0, mip_gap=0.0)
    elapsed = time.monotonic() - start
    # the limit, the watchdog's grace, and slack for a loaded machine; far below the 60 s sleep
    assert elapsed < 1.0 * 1.05 + milp.OVERRUN_GRACE_S + 1.0, elapsed
    assert allocation.status == "feasible"
    assert allocation.gap is not None and allocation.gap > 0
    assert allocation.lower_bound < allocation.objective
    for used, limit in allocation.budget_use.values():
        assert used <= limit * (1 + 1e-9)
