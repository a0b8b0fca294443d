"""The Lambda's artifact holds what the function runs and nothing else.

The code half of the real build (functions/Makefile: copy + compile) runs into a temporary
directory; the modules it ships must be exactly the modules the handler imports, plus a short,
explicit allow-list. A module that creeps into reditus_refunds/ without the handler using it (a
simulator, a CLI, an operators' helper) fails here, and so does a module the handler needs but the
build leaves out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# Shipped although the handler does not import them, each for a reason.
ALLOWED_EXTRA_FILES = {
    "reditus_refunds/py.typed": "PEP 561 marker: costs nothing, keeps the package the same everywhere",
    "reditus_refunds/schema/refund-request.schema.json": "the published contract (contract.json_schema)",
}
ALLOWED_EXTRA_MODULES: dict[str, str] = {
    "reditus_refunds.counter_stream": "the day counters' handler (CounterStreamFunction ships this package)",
    "reditus_refunds.day_counts": "the day counters' arithmetic (counter_stream's, below)",
    "reditus_refunds.repair": "the operators' recount of the day counters (the CLI's; no function's)",
}

IMPORT_PROBE = """
import json, sys
import reditus_refunds.handler
ours = [m for m in sys.modules if m.split(".")[0] == "reditus_refunds"]
print(json.dumps(sorted(ours)))
"""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build(target: str, out: Path) -> Path:
    """The code half of a function's real build (copy + compile), with this interpreter."""
    done = subprocess.run(
        [
            *("make", "--no-print-directory", "-C", str(FUNCTIONS), target),
            *(f"ARTIFACTS_DIR={out}", f"PYTHON={sys.executable}", f"RUNTIME={THIS_PYTHON}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def imported_by(artifact: Path, probe: str, settings: dict[str, str], drop: tuple[str, ...] = ()) -> set[str]:
    """Our modules a handler imports, importing it from the artifact alone."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(drop)},
        "PYTHONPATH": str(artifact),
        "PYTHONDONTWRITEBYTECODE": "1",
        **settings,
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=artifact, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("package-code", tmp_path_factory.mktemp("artifact"))


def handler_imports(artifact: Path) -> set[str]:
    return imported_by(
        artifact,
        IMPORT_PROBE,
        {
            "HISTORY_TABLE_NAME": "history",
            "REFUND_QUEUE_URL": "http://127.0.0.1:9/queue/refunds",
            "REDITUS_API_BASE_URL": "http://127.0.0.1:9",
            "REDITUS_API_KEY": "not-used",
        },
    )


def test_the_artifact_ships_exactly_the_handlers_modules(artifact: Path) -> None:
    shipped = {module_name(p, artifact) for p in (artifact / "reditus_refunds").rglob("*.py")}
    imported = handler_imports(artifact)
    assert imported, "the probe saw no module of ours"
    assert shipped - imported - set(ALLOWED_EXTRA_MODULES) == set(), "shipped but never imported"
    assert imported - shipped == set(), "imported but not shipped"


def test_the_artifact_has_no_data_files_beyond_the_allow_list(artifact: Path) -> None:
    files = {
        str(p.relative_to(artifact))
        for p in artifact.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert files == set(ALLOWED_EXTRA_FILES)


def test_no_dev_stack_cli_console_or_operators_code_in_the_artifact(artifact: Path) -> None:
    top_level = {p.name for p in artifact.iterdir()}
    for absent in ("reditus_local", "reditus_operators", "ui", "tests", "bench", "reditus_webhooks"):
        assert absent not in top_level
    names = {p.stem for p in artifact.rglob("*.py")}
    for absent in (
        "simulator",
        "motoserver",
        "worker",
        "cli",
        "csv_import",
        "dlq",
        "operations",
        "app_pages",
    ):
        assert absent not in names


# --- the day counters' function (build-CounterStreamFunction: the same package) -----------------

COUNTER_STREAM_PROBE = """
import json, sys
import reditus_refunds.counter_stream
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("reditus_refunds", "requests"))))
"""


def test_the_counter_stream_runs_from_the_artifact_without_the_submitters_modules(artifact: Path) -> None:
    imported = imported_by(artifact, COUNTER_STREAM_PROBE, {"HISTORY_TABLE_NAME": "history"})
    shipped = {module_name(p, artifact) for p in (artifact / "reditus_refunds").rglob("*.py")}
    assert {"reditus_refunds.counter_stream", "reditus_refunds.day_counts"} <= imported
    assert imported <= shipped, "imported but not shipped"
    # No Reditus client, no submitter, no composition root, no recount: its cold start is its own.
    heavy = {"requests", "reditus_refunds.app", "reditus_refunds.handler", "reditus_refunds.reditus"}
    heavy |= {"reditus_refunds.submitter", "reditus_refunds.settings", "reditus_refunds.repair"}
    assert not imported & heavy
    # Every module an extra handler needs is in the allow-list or the submitter's own imports.
    assert imported - handler_imports(artifact) <= set(ALLOWED_EXTRA_MODULES)


# --- the webhook receiver's artifact (build-WebhookReceiverFunction) ----------------------------

RECEIVER_PACKAGES = ("reditus_webhooks", "reditus_refunds")
RECEIVER_ALLOWED_EXTRA_FILES = {
    "reditus_refunds/py.typed": "PEP 561 marker, as in the submitter's artifact",
}
RECEIVER_ALLOWED_EXTRA_MODULES: dict[str, str] = {}
# The submitter's own modules: the receiver never calls Reditus nor consumes the queue.
SUBMITTER_ONLY = {
    "reditus_refunds.handler",
    "reditus_refunds.app",
    "reditus_refunds.submitter",
    "reditus_refunds.reditus",
    "reditus_refunds.settings",
}
RECEIVER_PROBE = """
import json, sys
import reditus_webhooks.handler
ours = [m for m in sys.modules if m.split(".")[0] in ("reditus_webhooks", "reditus_refunds")]
print(json.dumps(sorted(ours)))
"""


@pytest.fixture(scope="module")
def receiver_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("package-receiver-code", tmp_path_factory.mktemp("receiver-artifact"))


def receiver_imports(artifact: Path) -> set[str]:
    return imported_by(
        artifact,
        RECEIVER_PROBE,
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "HISTORY_TABLE_NAME": "history",
            "REFUND_QUEUE_URL": "http://127.0.0.1:9/queue/refunds",
            "REDITUS_WEBHOOK_STRIPE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:stripe",
        },
        drop=("REDITUS_", "STRIPE_", "PADDLE_"),
    )


def test_the_receiver_artifact_ships_exactly_its_handlers_modules(receiver_artifact: Path) -> None:
    shipped = {
        module_name(p, receiver_artifact)
        for package in RECEIVER_PACKAGES
        for p in (receiver_artifact / package).rglob("*.py")
    }
    imported = receiver_imports(receiver_artifact)
    assert "reditus_webhooks.handler" in imported
    assert shipped - imported - set(RECEIVER_ALLOWED_EXTRA_MODULES) == set(), "shipped but never imported"
    assert imported - shipped == set(), "imported but not shipped"
    assert not shipped & SUBMITTER_ONLY, "the submitter's modules are not the receiver's"


def test_the_receiver_artifact_has_nothing_else(receiver_artifact: Path) -> None:
    assert {p.name for p in receiver_artifact.iterdir()} == set(RECEIVER_PACKAGES)
    files = {
        str(p.relative_to(receiver_artifact))
        for p in receiver_artifact.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert files == set(RECEIVER_ALLOWED_EXTRA_FILES)
    # Compiled like the submitter's: every module has its bytecode for this Python.
    for source in receiver_artifact.rglob("*.py"):
        tag = sys.implementation.cache_tag
        assert (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").is_file(), source
    names = {p.stem for p in receiver_artifact.rglob("*.py")}
    assert not names & {"function_url", "review", "simulator", "cli", "motoserver"}
