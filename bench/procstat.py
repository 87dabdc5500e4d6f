"""CPU time and memory of a process, from Linux's /proc (all of its threads counted)."""

from __future__ import annotations

import os

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: count fields after its ")".
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS_PER_SECOND


def _status_bytes(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # given in kB
    raise ValueError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """Highest resident set size since the process started."""
    return _status_bytes(pid, "VmHWM")
