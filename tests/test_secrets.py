"""The Reditus API key never shows: not in logs, history, CLI output, console pages or exception text.

The whole local system runs as separate processes - the product's AWS server, the Reditus simulator
and the worker running the real handler, its logs at DEBUG and Powertools' own debug logs on - with
two known keys: the simulator accepts one, the Secrets Manager secret first holds the other. So
Reditus answers 401 to every call until the operator puts the right key in the secret and redrives
the dead letters, as the README tells them to. Along the way everything a person or a log pipeline
could see is captured: every process's stdout and stderr, the CLI's output (enqueue, history,
history --json, dlq list, dlq list --json, dlq redrive), every history item and dead letter, each
console page (Streamlit AppTest against the same AWS endpoint: every element of the rendered tree),
the simulator's records and the texts of what the client returns and the handler raises for a 401.
And Reditus is careless: every error answer repeats the key it was sent, upper-cased, escaped,
encoded, cut and masked (the simulator's echo_key knob). Neither key may appear in any of them, in
any of those forms.

Access: with sign-in configured, no console page - queue, bulk upload, history, dead letters - shows
anything but the sign-in until the operator signs in, so nothing can be queued or redriven.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import streamlit as st
from streamlit.testing.v1 import AppTest

from reditus_local.simulator import echo_forms
from reditus_refunds.app import StaticKeyProvider
from reditus_refunds.reditus import ReditusClient
from reditus_refunds.settings import Settings
from reditus_refunds.submitter import RetryLater
from tests.conftest import AwsFixture
from tests.soak.system import Servers, System, SystemSettings, start_servers, wait_until

pytestmark = pytest.mark.timeout(240)

# Distinctive, so that a find means a leak. The simulator accepts only SIMULATOR_KEY.
SIMULATOR_KEY = "rk_live_" + secrets.token_hex(16)
WRONG_KEY = "rk_live_" + secrets.token_hex(16)
KEYS = {"the right key": SIMULATOR_KEY, "the wrong key": WRONG_KEY}
CLI = Path(sys.executable).with_name("reditus-refunds")
APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
PAGES = (
    "app_pages/queue_refund.py",
    "app_pages/bulk_upload.py",
    "app_pages/history.py",
    "app_pages/dead_letters.py",
)
PAYMENTS = ("pay_secret_1", "pay_secret_2")


@dataclass
class Seen:
    """Everything captured, by where it was seen."""

    texts: dict[str, bytes] = field(default_factory=dict)
    refund_ids: list[str] = field(default_factory=list)

    def add(self, source: str, text: str | bytes) -> None:
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        self.texts[source] = self.texts.get(source, b"") + data + b"\n"

    def of(self, prefix: str) -> dict[str, bytes]:
        return {name: text for name, text in self.texts.items() if name.startswith(prefix)}


def cli(system: System, seen: Seen, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **system.worker_env(),
        "DEAD_LETTER_QUEUE_URL": system.dlq_url,
        "REDITUS_LOCAL_DATA_DIR": str(system.log_dir / "no-local-stack"),
    }
    for name in ("REDITUS_API_KEY", "REDITUS_API_KEY_SECRET"):
        env.pop(name, None)
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60)
    seen.add(f"cli: {' '.join(args)}", done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr
    return done


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from walk(child)


def rendered(at: AppTest) -> bytes:
    """Every element of a rendered page: its protobuf (text, values, serialised tables) and tables as CSV."""
    parts: list[bytes] = []
    for node in walk(at._tree):
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(proto.SerializeToString())
            parts.append(str(proto).encode())
    for frame in at.dataframe:
        parts.append(frame.value.to_csv().encode())
    return b"\n".join(parts)


def console(system: System, seen: Seen, label: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each page of the console, and one refund's detail; returns the detail page's texts."""
    for name in ("CONSOLE_PASSWORD", "REDITUS_STACK_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONSOLE_OPEN", "1")
    monkeypatch.setenv("HISTORY_TABLE_NAME", system.table)
    monkeypatch.setenv("REFUND_QUEUE_URL", system.queue_url)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", system.dlq_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", system.servers.endpoint)
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(system.log_dir / "no-local-stack"))
    st.cache_resource.clear()
    st.cache_data.clear()
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=60)
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        seen.add(f"console {label}: {page}", rendered(at))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/history.py")
    at.query_params["refund_id"] = seen.refund_ids[0]
    at.run()
    assert not at.exception, at.exception
    seen.add(f"console {label}: refund detail", rendered(at))
    return [t.value for t in at.text]


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Seen:
    log_dir = tmp_path_factory.mktemp("secrets")
    found = Seen()
    servers: Servers = start_servers(log_dir, SIMULATOR_KEY, verbose=True)
    system: System | None = None
    try:
        servers.configure(add_payments=list(PAYMENTS), echo_key="all")
        settings = SystemSettings(
            visibility_timeout=2,
            max_receive_count=2,
            parameters={"LogLevel": "DEBUG", "NotFoundGraceSeconds": 0},
            # POWERTOOLS_DEBUG: Powertools' own debug logs too (the secret's fetch among them).
            function_env={
                "REDITUS_BACKOFF_BASE": "0.05",
                "REDITUS_BACKOFF_CAP": "0.2",
                "POWERTOOLS_DEBUG": "true",
            },
            quiet=False,  # the worker's per-message lines too
        )
        system = System(servers, "secrets", settings, log_dir, secret_value=WRONG_KEY)
        system.start_workers()
        with pytest.MonkeyPatch.context() as monkeypatch:
            # 1. Reditus refuses the key in the secret: retried, then dead-lettered.
            for payment_id in PAYMENTS:
                done = cli(system, found, "enqueue", payment_id, "--requested-by", "secrets-test")
                found.refund_ids.append(done.stdout.strip())
            wait_until(
                lambda: len(system.dead_letters()) == len(PAYMENTS) if system else False,
                60,
                "both refunds to be dead-lettered after 401s",
                lambda: system.workers[0].output() if system else "",
            )
            for args in (["history"], ["history", "--json"], ["dlq", "list"], ["dlq", "list", "--json"]):
                cli(system, found, *args)
            detail = console(system, found, "after the 401s", monkeypatch)
            assert any("refused our API key" in text for text in detail), detail  # the 401 is on show

            # 2. The operator puts the right key in the secret and redrives.
            system.client("secretsmanager").put_secret_value(
                SecretId=system.local.secret_arn, SecretString=SIMULATOR_KEY
            )
            cli(system, found, "dlq", "redrive", "--all")

            def refunded() -> bool:
                records = [system.store.get(r) for r in found.refund_ids] if system else []
                return all(r is not None and r.outcome.value == "refunded" for r in records)

            wait_until(refunded, 60, "the redriven refunds to be refunded", system.workers[0].output)
            cli(system, found, "history", "--json")
            console(system, found, "after the fix", monkeypatch)

        found.add("history items", json.dumps(system.raw_scan()))
        found.add("dead letters", "\n".join(letter.body for letter in system.dead_letters()))
        found.add("simulator config", json.dumps(servers.configure()))
        found.add("simulator requests", json.dumps(servers.requests()))
        echoed = requests.post(
            servers.reditus_url + "/v1/refunds",
            json={"payment_id": PAYMENTS[0]},
            headers={"Authorization": f"Bearer {WRONG_KEY}"},
            timeout=10,
        )
        # Kept apart from what is searched: it is Reditus's answer itself.
        found.texts["echoed 401"] = echoed.json()["errors"][0]["details"].encode()
        # The texts of what the client and the handler raise and keep for a 401.
        answer = ReditusClient(servers.reditus_url, lambda force: WRONG_KEY, max_attempts=2).refund(
            PAYMENTS[0], time.monotonic() + 10
        )
        assert answer.http_status == 401
        found.add("exceptions", f"{answer!r}\n{RetryLater(answer.detail)!r}\n{RetryLater(answer.detail)}")
        local_settings = Settings.from_env(
            {"HISTORY_TABLE_NAME": "t", "REDITUS_API_KEY": SIMULATOR_KEY, "NOT_FOUND_GRACE_SECONDS": "0"}
        )
        found.add("exceptions", f"{local_settings!r}\n{StaticKeyProvider(SIMULATOR_KEY)!r}")
    finally:
        if system is not None:
            system.stop()
        servers.stop()
    # Stopped: every line they wrote, the shutdown's too.
    for process in [servers.aws, servers.simulator, *(system.workers if system else [])]:
        found.add(f"process {process.name}", process.raw_output())
    return found


def key_forms(key: str) -> dict[str, str]:
    """The key as the echoing simulator writes it; for the cut forms, the part of the key they show."""
    third = len(key) * 2 // 3
    return {**echo_forms(key), "prefix": key[:third], "suffix": key[-third:], "masked": key[:10]}


def shows(text: bytes, shown: str) -> bool:
    # Escaped forms written inside JSON (a log line, an item) have their backslashes doubled.
    views = (text, text.replace(b"\\\\", b"\\"))
    return any(shown.encode(encoding) in view for view in views for encoding in ("utf-8", "utf-16-le"))


def leaks(texts: dict[str, bytes]) -> list[str]:
    return [
        f"{which} ({form}) in {source}"
        for source, text in texts.items()
        for which, key in KEYS.items()
        for form, shown in key_forms(key).items()
        if shows(text, shown)
    ]


def test_the_401s_and_the_fix_happened(seen: Seen) -> None:
    """The scenario did what it says, so the checks below looked at something."""
    worker = b"".join(seen.of("process secrets-worker").values())
    assert b"Reditus refused the API key" in worker  # the handler's error log for a 401
    assert b'"level":"INFO"' in worker  # below the template's default level: everything the handler says
    history = seen.texts["history items"]
    assert b"auth_error" in history and b"refunded" in history
    assert b"dead_lettered" in b"".join(seen.of("cli: history --json").values())
    letters = b"".join(seen.of("cli: dlq list").values())
    assert all(p.encode() in letters for p in PAYMENTS)
    assert len(seen.of("console")) == 2 * (len(PAGES) + 1)
    assert len(seen.of("process")) == 3


def test_no_process_writes_the_key(seen: Seen) -> None:
    assert seen.of("process")
    assert not leaks(seen.of("process"))


def test_no_history_item_dead_letter_or_exception_holds_the_key(seen: Seen) -> None:
    sources = {
        name: seen.texts[name]
        for name in ("history items", "dead letters", "simulator config", "simulator requests", "exceptions")
    }
    assert not leaks(sources)


def test_no_cli_output_shows_the_key(seen: Seen) -> None:
    assert len(seen.of("cli")) >= 7
    assert not leaks(seen.of("cli"))


def test_no_console_page_shows_the_key(seen: Seen) -> None:
    assert not leaks(seen.of("console"))


def test_the_search_would_find_a_leak() -> None:
    found = leaks({"a log line": f'{{"detail": "Bearer {SIMULATOR_KEY}"}}'.encode()})
    assert "the right key (plain) in a log line" in found
    assert all(text.startswith("the right key (") for text in found)
    for form, text in echo_forms(WRONG_KEY).items():
        assert f"the wrong key ({form}) in a detail" in leaks({"a detail": f"key received: {text}".encode()})
        in_json = json.dumps({"detail": text}).encode()  # "\\u0072..." in a JSON log line
        assert f"the wrong key ({form}) in a log" in leaks({"a log": in_json})


def test_reditus_echoed_the_key(seen: Seen) -> None:
    """The careless Reditus did repeat the key, so the checks above looked at echoes too."""
    answer = seen.texts["echoed 401"].decode()
    assert all(text in answer for text in echo_forms(WRONG_KEY).values())


# ---- access -------------------------------------------------------------------------------------------
OIDC = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "s3cret",
    "client_id": "console",
    "client_secret": "x",
    "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration",
}


@pytest.mark.parametrize("sign_in", ["password", "openid-connect"])
def test_without_sign_in_no_page_queues_or_redrives(
    aws: AwsFixture, sign_in: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With sign-in configured, every page - the dead letters' too - shows only the sign-in."""
    for name in ("CONSOLE_PASSWORD", "CONSOLE_SIGN_IN", "REDITUS_STACK_NAME", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONSOLE_OPEN", "1")  # sign-in wins over an open console
    monkeypatch.setenv("HISTORY_TABLE_NAME", aws.table)
    monkeypatch.setenv("REFUND_QUEUE_URL", aws.queue_url)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url)
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-local-stack"))
    if sign_in == "password":  # one account per person (the shared password is retired)
        monkeypatch.setenv("CONSOLE_SIGN_IN", "password")
    st.cache_resource.clear()
    st.cache_data.clear()
    aws.sqs.send_message(
        QueueUrl=aws.dlq_url, MessageBody='{"refund_id": "r-dead", "payment_id": "pay_dead"}'
    )
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=60)
        if sign_in == "openid-connect":
            at.secrets["auth"] = OIDC
            at.user = {"is_logged_in": False}
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        assert [b.label for b in at.button] == ["Sign in"], (page, [b.label for b in at.button])
        assert [t.value for t in at.title] == ["Reditus refunds console"], page
        assert not at.dataframe and not at.get("file_uploader")
        if sign_in == "password":  # a wrong password opens nothing either
            at.text_input[0].input("Mallory")
            at.text_input[1].input("guess")
            at.button[0].click()
            at.run()
            assert [b.label for b in at.button] == ["Sign in"] and not at.dataframe
    depth = {
        url: aws.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        for url in (aws.queue_url, aws.dlq_url)
    }
    assert depth[aws.queue_url]["ApproximateNumberOfMessages"] == "0"  # nothing queued or redriven
    assert depth[aws.dlq_url] == {
        "ApproximateNumberOfMessages": "1",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    st.cache_resource.clear()
    st.cache_data.clear()
