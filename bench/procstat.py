"""CPU time and peak memory of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by every thread of ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # utime, stime (fields 14, 15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of ``pid``."""
    return sum(cpu_split(pid))


def _status(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """The leading integers of the ``keys`` lines of a /proc status file."""
    out = {}
    with open(path) as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0])
    return out


def preemptions(pid: int) -> int:
    """Times the scheduler took a CPU away from a thread of ``pid`` while it could still run
    (``nonvoluntary_ctxt_switches``, summed over the threads alive now; a thread that ends
    between the listing and the read counts as none)."""
    key, total = "nonvoluntary_ctxt_switches", 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            total += _status(f"{task.path}/status", (key,))[key]
        except FileNotFoundError:
            pass
    return total


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    return _status(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (from /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def self_cpu_seconds() -> float:
    """CPU seconds used by this (load generator) process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    """CPU share of the server and of the load generator over a measured window."""

    pid: int
    start: float = 0.0
    server0: float = 0.0
    system0: float = 0.0
    server_system_share: float = 0.0  # part of the server's CPU spent in the kernel
    self0: float = 0.0
    busy0: float = 0.0
    server_cores: float = 0.0
    loadgen_cores: float = 0.0
    other_cores: float = 0.0  # everything else on the machine: other engineers' work

    def begin(self) -> None:
        """Mark the window's start."""
        self.start = time.monotonic()
        user, system = cpu_split(self.pid)
        self.server0, self.system0 = user + system, system
        self.self0 = self_cpu_seconds()
        self.busy0 = machine_busy_seconds()

    def end(self) -> float:
        """Close the window; returns its length in seconds."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        user, system = cpu_split(self.pid)
        used = user + system - self.server0
        self.server_cores = used / elapsed
        self.server_system_share = (system - self.system0) / used if used > 0 else 0.0
        self.loadgen_cores = (self_cpu_seconds() - self.self0) / elapsed
        busy = (machine_busy_seconds() - self.busy0) / elapsed
        self.other_cores = max(0.0, busy - self.server_cores - self.loadgen_cores)
        return elapsed
