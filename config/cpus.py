"""How many CPUs this process may really use: what the ONNX thread and embedding process counts derive from.

``os.cpu_count()`` counts the host's CPUs. In a container limited by a CPU quota (docker ``--cpus 2`` on a
64-core host) or pinned to a few cores (``taskset``, ``--cpuset-cpus``), sizing pools from it starts 64
processes that fight over 2 CPUs. So: the CPUs in this process's affinity mask, capped by the cgroup's quota
(v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: affinity mask, capped by the cgroup CPU quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs (1.5 = one and a half), or None when there is none or it is unreadable."""
    try:
        v2 = cgroup_root / "cpu.max"
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        v1 = cgroup_root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text().strip())
            if quota_us <= 0:
                return None
            return quota_us / int((v1 / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None
