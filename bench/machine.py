"""The machine the figures were measured on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    memory_gb: float
    python: str
    system: str
    versions: str
    date: str
    load: str  # load average (1, 5, 15 minutes) when the bench started: others' work on the machine

    def line(self) -> str:
        return (
            f"{self.cpus} CPUs ({self.cpu_model}), {self.memory_gb:.0f} GB RAM, {self.system}, "
            f"Python {self.python}; {self.versions}; load average {self.load} at the start"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def load_average() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def describe(load: str | None = None) -> Machine:
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("boto3", "aws-lambda-powertools", "requests", "moto")
    )
    return Machine(
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0),
        cpu_model=_cpu_model(),
        memory_gb=_memory_gb(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()}",
        versions=versions,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load=load or load_average(),
    )
