"""The slot's process and its clock: when it started (the budget counts its imports too), the
two deadlines its budget leaves, and its exit without the interpreter's teardown (the budget
counts the exit too). Needs no torch."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import NamedTuple


def process_start_time() -> float:
    """When this process started (time.time() scale), from /proc; now where /proc cannot say."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return min(time.time(), boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


class Deadlines(NamedTuple):
    hard_stop: float  # an epoch still running then is abandoned
    stop_at: float    # the runs' clean-stop deadline, one reserve before the hard stop


def deadlines(start: float, budget: float, reserve: float | None = None) -> Deadlines:
    """The deadlines of a budget counted from `start`, each one `reserve` before the next (the
    end of the budget last); None: 5% of the budget, 1 to 15 s."""
    reserve = reserve if reserve is not None else min(15.0, max(1.0, 0.05 * budget))
    hard_stop = start + budget - reserve
    return Deadlines(hard_stop, hard_stop - reserve)


def seconds_left(deadline: float, kept: float = 0.0) -> float:
    """Seconds from now to `deadline`, less `kept` (what a start needs), never below 0."""
    return max(0.0, deadline - time.time() - kept)


def exit_without_teardown() -> None:
    """Exit 0 now, once everything is written (atomically, fsynced): with torch imported the
    interpreter's teardown took 5 s and more on a loaded machine."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
