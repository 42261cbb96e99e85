"""CPU seconds of a whole process tree, read from ``/proc`` (Linux).

``resource.getrusage(RUSAGE_CHILDREN)`` counts only children that have exited and been
waited for, so it misses live ``DataLoader`` / DALI source worker processes; ``/proc/self/stat``
alone misses them too. :func:`tree_cpu_seconds` sums ``utime + stime`` (all threads of each
process) over a process and every live descendant, plus ``cutime + cstime`` (descendants
already reaped), so a difference of two readings is the CPU the tree used in between.
"""
from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (field 3 is index 0), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process exited between listing and reading
        return None
    return raw[raw.rindex(")") + 2:].split()


def _process_table() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds incl. reaped children)} of every readable process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is None:
            continue
        # fields 14-17 (utime, stime, cutime, cstime) are at 11-14 here; field 4 (ppid) at 1
        table[int(entry.name)] = (int(f[1]), sum(int(x) for x in f[11:15]) / _TICK)
    return table


def tree_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, every thread) used so far by process ``pid`` (default: this
    one) and all its live descendants, plus their reaped children. Linux only."""
    root = os.getpid() if pid is None else pid
    table = _process_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        if p in table:
            total += table[p][1]
        todo.extend(children.get(p, ()))
    return total


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``, busy time:
    all but idle and iowait): minus :func:`tree_cpu_seconds` over an interval, the load that
    other processes put on the machine meanwhile."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / _TICK


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (as ``uptime`` prints them), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
