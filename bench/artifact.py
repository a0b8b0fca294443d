"""The Lambda packages as `sam build` makes them, built for the runtime's Python to time cold starts on.

functions/Makefile (the target `sam build` runs) pip-installs the locked dependencies
(functions/requirements.lock, hash-checked) as wheels for Python 3.12 and this machine's Linux
platform, copies the function's code and compiles everything to unchecked-hash bytecode. The bench
builds both functions' packages that way into a temporary directory and imports each handler from
its package with a python3.12 whose own site-packages holds no boto3: what Lambda's /var/task
holds, run by the interpreter the template names. The development venv (Python 3.11 here, its
editable installs and their source-only code) is not what the function runs.

Needs python3.12 (on the PATH or pyenv's, found as functions/Makefile finds it) and the package
registry (pip's cache makes later builds quick). Without either the cold-start figures fall back
to the development interpreter, and the table says so.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import ROOT

RUNTIME = "3.12"  # template.yaml: Runtime: python3.12
FUNCTIONS = ROOT / "functions"
SUBMITTER = "RefundSubmitterFunction"
RECEIVER = "WebhookReceiverFunction"


def runtime_python() -> str | None:
    """The real python3.12: pyenv's versions first (its shim can answer "command not found" in
    this checkout), then the PATH; each checked by running it."""
    candidates: list[str] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False, timeout=30)
        if done.returncode == 0:
            found = Path(done.stdout.strip()).glob(f"versions/{RUNTIME}*/bin/python{RUNTIME}")
            candidates += [str(p) for p in sorted(found)]
    on_path = shutil.which(f"python{RUNTIME}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == RUNTIME:
            return candidate
    return None


def manylinux_platform() -> str:
    machine = platform.machine().lower()
    return "manylinux2014_" + {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def version_of(executable: str) -> str:
    return subprocess.run(
        [executable, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


@dataclass(frozen=True)
class Built:
    python: str  # the python3.12 that built it and runs it
    version: str  # e.g. "3.12.1"
    submitter: Path  # the refund submitter's package (as /var/task holds it)
    receiver: Path  # the webhook receiver's package


class BuildFailed(RuntimeError):
    pass


def build(workdir: Path, python: str) -> Built:
    """Both functions' packages under `workdir`, built by functions/Makefile for `python`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out: dict[str, Path] = {}
    for target in (SUBMITTER, RECEIVER):
        artifact = workdir / target
        done = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(FUNCTIONS),
                f"build-{target}",
                f"ARTIFACTS_DIR={artifact}",
                f"PYTHON={python}",
                f"PLATFORM={manylinux_platform()}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if done.returncode != 0:
            raise BuildFailed(f"functions/Makefile build-{target} failed:\n{done.stderr[-2000:]}")
        out[target] = artifact
    return Built(python, version_of(python), out[SUBMITTER], out[RECEIVER])
