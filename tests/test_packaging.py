"""The Lambda package ships compiled bytecode: `sam build` runs functions/Makefile (BuildMethod
makefile), which compiles the dependencies and the code for the runtime's Python.

Lambda's /var/task is read-only, so a package without bytecode compiles every module again on every
cold start (SAM's default Python builder ships none). Here the code half of the build runs for real
(copy + compile, with this interpreter standing in for the runtime's); the dependency half is a pip
install from the package index, which tests do not reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def test_the_template_builds_the_receiver_with_the_makefile_like_the_submitter() -> None:
    resources = load_template(ROOT / "template.yaml")["Resources"]
    receiver, submitter = resources["WebhookReceiverFunction"], resources["RefundSubmitterFunction"]
    assert receiver["Metadata"]["BuildMethod"] == "makefile"
    for key in ("CodeUri", "Runtime", "Architectures"):
        assert receiver["Properties"][key] == submitter["Properties"][key]
    makefile = (FUNCTIONS / "Makefile").read_text(encoding="utf-8")
    target = makefile.split("\nbuild-WebhookReceiverFunction:", 1)[1].split("\n\n", 1)[0]
    # The same locked dependencies, then the receiver's own code, compiled.
    assert "dependencies" in target and "package-receiver-code" in target


def test_the_receiver_imports_from_its_package_without_compiling_anything(tmp_path: Path) -> None:
    done = make(
        "package-receiver-code",
        f"ARTIFACTS_DIR={tmp_path}",
        f"PYTHON={sys.executable}",
        f"RUNTIME={THIS_PYTHON}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REDITUS_")},
        "PYTHONPATH": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HISTORY_TABLE_NAME": "history",
        "REFUND_QUEUE_URL": "http://127.0.0.1:9/queue/refunds",
    }
    env.pop("PYTHONPYCACHEPREFIX", None)
    probe = IMPORT_PROBE.replace("reditus_refunds.handler", "reditus_webhooks.handler")
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(tmp_path), "imported the working tree, not the package"
    assert [path for path in seen["compiled"] if Path(path).is_relative_to(tmp_path)] == []


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
        "-r requirements.lock",
        "--require-hashes",
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


def test_the_build_says_plainly_when_the_runtimes_python_is_missing(tmp_path: Path) -> None:
    """A pyenv shim answers "command not found" for a version another .python-version does not pick;
    the build says what to do instead of failing on that."""
    runtime = "3.97"  # no machine has it: the real interpreters on the PATH cannot interfere
    shims = tmp_path / "shims"
    shims.mkdir()
    _script(shims / f"python{runtime}", f'echo "pyenv: python{runtime}: command not found" >&2; exit 127')
    env = {**os.environ, "PATH": f"{shims}:/usr/bin:/bin"}
    env.pop("PYTHON", None)
    target = ["package-code", f"RUNTIME={runtime}", f"ARTIFACTS_DIR={tmp_path / 'out'}"]
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(FUNCTIONS), *target],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        f"python{runtime} not found: install Python {runtime} or run sam build --use-container" in done.stderr
    ), done.stderr
    assert "command not found" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_the_build_finds_pyenvs_interpreter_behind_a_failing_shim(tmp_path: Path) -> None:
    runtime = "3.97"
    shims, tools = tmp_path / "shims", tmp_path / "bin"
    shims.mkdir()
    tools.mkdir()
    _script(shims / f"python{runtime}", "exit 127")
    real = tmp_path / "pyenv-root" / "versions" / f"{runtime}.1" / "bin" / f"python{runtime}"
    real.parent.mkdir(parents=True)
    _script(real, "exit 0")  # answers every check as the runtime's Python would
    _script(tools / "pyenv", f'[ "$1" = root ] && echo "{tmp_path / "pyenv-root"}"')
    env = {**os.environ, "PATH": f"{shims}:{tools}:/usr/bin:/bin"}
    env.pop("PYTHON", None)
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(FUNCTIONS), "-n", "dependencies", f"RUNTIME={runtime}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.lstrip().startswith(f"{real} -m pip install"), done.stdout


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# ---- the locks: reproducible installs, checked against pyproject.toml ------------------------------

LAMBDA_LOCK = FUNCTIONS / "requirements.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
CHECKOV_LOCK = ROOT / "requirements" / "checkov.lock"
ADVISORY_FLOORS = ROOT / "requirements" / "advisory-floors.txt"
# Below these, a release has a published advisory (the floors file may only raise them).
KNOWN_ADVISORIES = {
    "requests": "2.32.4",
    "urllib3": "2.5.0",
    "jinja2": "3.1.6",
    "setuptools": "78.1.1",
}
# Where the Lambda runs (template.yaml: python3.12, arm64) and where developers work.
LAMBDA_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "aarch64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix"}  # fmt: skip
DEV_ENVS = [
    {**LAMBDA_ENV, "platform_machine": "x86_64", "python_version": v, "python_full_version": f"{v}.0"}
    for v in ("3.11", "3.12", "3.13")
]


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, env: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(env)


def read_lock(path: Path) -> list[Pin]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pins = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: {line!r} is not a pinned release"
        spec, *hashes = (part.strip() for part in line.split("--hash="))
        requirement = Requirement(spec)
        (pinned,) = requirement.specifier
        assert pinned.operator == "==", f"{path.name}: {spec} is not pinned"
        pins.append(Pin(canonicalize_name(requirement.name), Version(pinned.version), requirement.marker,
                        tuple(hashes)))  # fmt: skip
    return pins


def pinned(pins: list[Pin], env: dict[str, str]) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for pin in pins:
        if pin.applies(env):
            assert pin.name not in found, f"{pin.name} pinned twice for {env['python_version']}"
            found[pin.name] = pin.version
    return found


def pyproject(path: Path = ROOT / "pyproject.toml") -> dict[str, object]:
    return dict(tomllib.loads(path.read_text(encoding="utf-8"))["project"])


def unsatisfied(requirements: list[str], pins: dict[str, Version], env: dict[str, str]) -> list[str]:
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (locked: {version or 'nothing'})")
    return missing


@pytest.mark.parametrize("lock", [LAMBDA_LOCK, DEV_LOCK], ids=["lambda", "dev"])
def test_every_locked_release_is_pinned_with_its_hashes(lock: Path) -> None:
    pins = read_lock(lock)
    assert pins
    for pin in pins:
        assert pin.hashes, f"{lock.name}: {pin.name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin
    assert "make lock" in lock.read_text(encoding="utf-8").split("\n", 3)[1], "say how it is updated"


def test_the_lambda_lock_satisfies_the_projects_dependencies() -> None:
    pins = pinned(read_lock(LAMBDA_LOCK), LAMBDA_ENV)
    dependencies = list(pyproject()["dependencies"])  # type: ignore[call-overload]
    assert unsatisfied(dependencies, pins, LAMBDA_ENV) == []
    # The extras (aws-lambda-powertools[tracer]) bring requirements of their own: locked too (read
    # from the installed distribution's metadata; the dev lock installs the same release).
    from importlib.metadata import requires

    for text in dependencies:
        requirement = Requirement(text)
        for extra in requirement.extras:
            needed = [
                Requirement(r)
                for r in requires(requirement.name) or []
                if Requirement(r).marker is not None
                and Requirement(r).marker.evaluate({**LAMBDA_ENV, "extra": extra})  # type: ignore[union-attr]
                and "extra" in str(Requirement(r).marker)
            ]
            assert needed, f"{requirement.name}[{extra}] requires nothing?"
            missing = unsatisfied([str(r).split(";")[0] for r in needed], pins, LAMBDA_ENV)
            assert missing == [], f"{requirement.name}[{extra}]"


@pytest.mark.parametrize("env", DEV_ENVS, ids=[e["python_version"] for e in DEV_ENVS])
def test_the_dev_lock_satisfies_every_requirement_of_the_project_and_the_local_stack(
    env: dict[str, str],
) -> None:
    pins = pinned(read_lock(DEV_LOCK), env)
    project = pyproject()
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    local = [
        r
        for r in pyproject(ROOT / "infra" / "pyproject.toml")["dependencies"]  # type: ignore[attr-defined]
        if canonicalize_name(Requirement(r).name) != "reditus-refunds"
    ]
    wanted = [*project["dependencies"], *extras["console"], *extras["dev"], *local]  # type: ignore[misc]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    assert unsatisfied([*wanted, *build], pins, env) == []
    assert "reditus-refunds" not in pins and "reditus-refunds-local" not in pins


def test_the_tests_run_the_releases_the_lambda_ships() -> None:
    dev = pinned(read_lock(DEV_LOCK), DEV_ENVS[1])
    shipped = pinned(read_lock(LAMBDA_LOCK), LAMBDA_ENV)
    differ = {name: (str(v), str(dev.get(name))) for name, v in shipped.items() if dev.get(name) != v}
    assert differ == {}, "lambda lock vs dev lock"


def test_no_locked_release_has_a_known_advisory() -> None:
    floors = {}
    for line in ADVISORY_FLOORS.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            floors[canonicalize_name(requirement.name)] = requirement.specifier
    for name, version in KNOWN_ADVISORIES.items():
        below = (*Version(version).release[:-1], Version(version).release[-1] - 1)
        assert not floors[name].contains(".".join(map(str, below))), f"the floor of {name} is below {version}"
    for lock, envs in ((LAMBDA_LOCK, [LAMBDA_ENV]), (DEV_LOCK, DEV_ENVS), (CHECKOV_LOCK, DEV_ENVS)):
        for env in envs:
            for name, version in pinned(read_lock(lock), env).items():
                if name in floors:
                    assert floors[name].contains(version), (
                        f"{lock.name}: {name}=={version} is below {floors[name]}"
                    )


def pip_installs(target: str) -> list[str]:
    """The pip commands `make` would run to build `target` from nothing."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "-n", "-B", target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "pip install" in line]


def test_make_install_installs_the_lock_and_nothing_else() -> None:
    assert pip_installs(".venv/.installed") == [
        ".venv/bin/python -m pip install --quiet --require-hashes -r requirements/dev.lock",
        ".venv/bin/python -m pip install --quiet --no-deps --no-build-isolation"
        " -e '.[console,dev]' -e ./infra",
    ]


def test_checkov_s_venv_installs_its_lock_and_nothing_else() -> None:
    assert pip_installs(".tools/checkov/.installed") == [
        ".tools/checkov/bin/python -m pip install --quiet --require-hashes -r requirements/checkov.lock"
    ]
    pins = read_lock(CHECKOV_LOCK)
    assert pins and all(pin.hashes for pin in pins)
    for env in DEV_ENVS:
        assert pinned(pins, env)["pip"] >= Version("25.3")  # the floor: it installs the rest


def test_make_unit_is_make_test_without_the_slow_and_packaging_tests() -> None:
    def pytest_line(target: str) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), "-n", "-o", ".venv/.installed", "-o", "install",
             "-o", "browser", "-o", "lint", "-o", "typecheck", "-o", "checks", target],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (line,) = [line for line in done.stdout.splitlines() if "/pytest" in line]
        return line

    assert pytest_line("test") == ".venv/bin/pytest -q"  # pyproject's addopts: everything but soak
    assert pytest_line("unit") == ".venv/bin/pytest -q -m 'not soak and not slow and not packaging'"


@pytest.mark.packaging
def test_the_lambda_lock_has_the_hashes_of_the_wheels_pip_picks_for_the_runtime(tmp_path: Path) -> None:
    """The wheels pip picks for arm64 Python 3.12 when nothing steers it: each one's hash is in the lock.

    (In hash-checking mode pip would quietly fall back to another file whose hash is listed, a pure
    Python wheel say, so the pins alone are downloaded, then their hashes compared.)"""
    pins = [pin for pin in read_lock(LAMBDA_LOCK) if pin.applies(LAMBDA_ENV)]
    plain = tmp_path / "pins.txt"
    plain.write_text("".join(f"{pin.name}=={pin.version}\n" for pin in pins), encoding="utf-8")
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--platform", "manylinux2014_aarch64", "--implementation", "cp", "--python-version", "3.12",
         "--only-binary=:all:", "-d", str(wheels), "-r", str(plain)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = {pin.name: set(pin.hashes) for pin in pins}
    picked = {}
    for wheel in wheels.glob("*.whl"):
        name = canonicalize_name(wheel.name.split("-")[0])
        digest = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert digest in hashes[name], f"{wheel.name}: its hash is not in {LAMBDA_LOCK.name}"
        picked[name] = wheel.name
    assert set(picked) == set(hashes)
    assert any("aarch64" in name for name in picked.values())  # the platform's wheels, not x86_64
