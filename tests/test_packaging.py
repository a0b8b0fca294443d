"""The Lambda package ships compiled bytecode: `sam build` runs functions/Makefile (BuildMethod
makefile), which compiles the dependencies and the code for the runtime's Python.

Lambda's /var/task is read-only, so a package without bytecode compiles every module again on every
cold start (SAM's default Python builder ships none). Here the code half of the build runs for real
(copy + compile, with this interpreter standing in for the runtime's); the dependency half is a pip
install from the package index, which tests do not reach.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reditus_local.template import load_template

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# Counts the modules compiled from source during the import (the loader calls source_to_code only
# when it has no usable bytecode).
IMPORT_PROBE = """
import importlib.machinery, json, sys
compiled = []
original = importlib.machinery.SourceFileLoader.source_to_code
def source_to_code(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = source_to_code
import reditus_refunds.handler
print(json.dumps({"file": reditus_refunds.handler.__file__, "compiled": compiled}))
"""


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(FUNCTIONS), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("artifacts")
    done = make(
        "package-code", f"ARTIFACTS_DIR={artifacts}", f"PYTHON={sys.executable}", f"RUNTIME={THIS_PYTHON}"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return artifacts


def test_the_template_builds_the_function_with_the_makefile() -> None:
    function = load_template(ROOT / "template.yaml")["Resources"]["RefundSubmitterFunction"]
    assert function["Metadata"]["BuildMethod"] == "makefile"
    assert function["Properties"]["CodeUri"].rstrip("/") == "functions"
    targets = (FUNCTIONS / "Makefile").read_text(encoding="utf-8")
    assert "\nbuild-RefundSubmitterFunction:" in targets  # sam build runs build-<LogicalId>


def test_the_build_installs_the_lambda_requirements_for_the_runtime_platform() -> None:
    """What `dependencies` would run, printed by make -n: the function's requirements, as wheels for
    arm64 Linux and the template's Python, whatever machine builds it."""
    template = load_template(ROOT / "template.yaml")
    runtime = template["Resources"]["RefundSubmitterFunction"]["Properties"]["Runtime"]
    assert template["Resources"]["RefundSubmitterFunction"]["Properties"]["Architectures"] == ["arm64"]
    done = make("-n", "dependencies", "ARTIFACTS_DIR=/tmp/never-built")
    assert done.returncode == 0, done.stderr
    command = done.stdout
    for option in (
        "-r requirements.txt",
        "--platform manylinux2014_aarch64",
        f"--python-version {runtime.removeprefix('python')}",
        "--only-binary=:all:",
        '--target "/tmp/never-built"',
    ):
        assert option in command
    makefile = (FUNCTIONS / "Makefile").read_text(encoding="utf-8")
    assert f"RUNTIME ?= {runtime.removeprefix('python')}" in makefile


def test_every_module_of_the_package_has_unchecked_hash_bytecode(package: Path) -> None:
    sources = sorted((package / "reditus_refunds").rglob("*.py"))
    assert package.joinpath("reditus_refunds", "handler.py") in sources
    tag = sys.implementation.cache_tag
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        assert pyc.is_file(), f"no bytecode for {source.relative_to(package)}"
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        # PEP 552: bit 0 hash-based, bit 1 check the source. Zip extraction does not keep the
        # mtimes a timestamp .pyc is checked against.
        assert flags == 0b01, f"{pyc.name}: flags {flags:#b}"
    assert not list((package / "reditus_refunds").rglob("__pycache__/*.cpython-*-*.pyc.*"))


def test_the_handler_imports_from_the_package_without_compiling_anything(package: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(package),
        "PYTHONDONTWRITEBYTECODE": "1",  # /var/task is read-only
        "HISTORY_TABLE_NAME": "history",
        "REFUND_QUEUE_URL": "http://127.0.0.1:9/queue/refunds",
        "REDITUS_API_BASE_URL": "http://127.0.0.1:9",
        "REDITUS_API_KEY": "not-used",
    }
    env.pop("PYTHONPYCACHEPREFIX", None)
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], env=env, cwd=package, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(package), "imported the working tree, not the package"
    ours = [path for path in seen["compiled"] if Path(path).is_relative_to(package)]
    assert ours == []


def test_the_build_refuses_a_python_that_is_not_the_runtimes(tmp_path: Path) -> None:
    done = make("package-code", f"ARTIFACTS_DIR={tmp_path}", f"PYTHON={sys.executable}", "RUNTIME=3.99")
    assert done.returncode != 0
    assert "the function runs on 3.99" in done.stderr
    assert "sam build --use-container" in done.stderr
    assert not (tmp_path / "reditus_refunds").exists()
