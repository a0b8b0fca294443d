"""Password mode in real browsers (issue 14): two console processes (`streamlit run ui/app.py`) on
127.0.0.1 against one moto server, driven by Debian's Chromium through Playwright.

- Each role signs in and is offered only its pages.
- Failures in one console process lock the account in the other: the count lives on the account item.

Chromium comes from `make browser` (infra/install-browser.sh): when it is missing, this fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from reditus_operators.access import Role
from reditus_operators.console import console_argv
from reditus_operators.users import MAX_FAILURES, UserStore
from tests.conftest import create_history_table
from tests.test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    START_TIMEOUT,
    _healthy,
    free_port,
    wait_for_app,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
TABLE = "history-browser-access"
PASSWORD = "correct horse battery staple"
OFFERED = {
    "viewer": ["History", "Sources"],
    "operator": ["Queue a refund", "Bulk upload", "History", "Sources"],
    "admin": ["Queue a refund", "Bulk upload", "History", "Dead letters", "Sources", "Audit"],
}


@dataclass
class System:
    endpoint: str
    users: UserStore
    consoles: list[str]


def _start_console(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", *console_argv(port, ROOT / "ui" / "app.py")],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this test started, and only that
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A moto server with the history table and queues, one account per role, two consoles."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        session = boto3.session.Session(region_name="us-east-1")
        dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        sqs = session.client("sqs", endpoint_url=endpoint)
        create_history_table(dynamodb, TABLE)
        dlq_url = sqs.create_queue(QueueName="refunds-dlq")["QueueUrl"]
        queue_url = sqs.create_queue(QueueName="refunds")["QueueUrl"]
        users = UserStore(TABLE, dynamodb)
        for role in Role:
            users.add(role.value, PASSWORD, role)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CONSOLE_OPEN", "CONSOLE_PASSWORD", "REDITUS_STACK_NAME", "CONSOLE_OPERATOR")
        }
        env |= {
            "AWS_ENDPOINT_URL": endpoint,
            "HISTORY_TABLE_NAME": TABLE,
            "REFUND_QUEUE_URL": queue_url,
            "DEAD_LETTER_QUEUE_URL": dlq_url,
            "CONSOLE_SIGN_IN": "password",
            "REDITUS_LOCAL_DATA_DIR": str(tmp_path_factory.mktemp("no-local-stack")),
        }
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        urls = []
        for n in range(2):
            process, url = _start_console(env, ARTIFACTS / f"browser-access-console-{n}.log")
            processes.append(process)
            urls.append(url)
        deadline = time.monotonic() + START_TIMEOUT
        for process, url in zip(processes, urls, strict=True):
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the console at {url} did not start (see {ARTIFACTS})")
                time.sleep(0.5)
        yield System(endpoint, users, urls)
    finally:
        for process in processes:
            _stop(process)
        server.stop()


@pytest.fixture(scope="module")
def browser(system: System) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash infra/install-browser.sh` as root (`make browser`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser: object, url: str) -> object:
    from playwright.sync_api import Browser, Page

    page: Page = browser.new_page(viewport={"width": 1440, "height": 1200})  # type: ignore[attr-defined]
    assert isinstance(browser, Browser)
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_role("button", name="Sign in").wait_for()
    return page


def sign_in(page: object, name: str, password: str) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    page.get_by_role("textbox", name="Account").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def audited_failures(system: System, name: str) -> list[tuple[str, str]]:
    """The account's refused sign-ins (action, reason), as the consoles recorded them."""
    from reditus_operators.audit import AuditReader

    reader = AuditReader(TABLE, system.users.table.client)
    return [(e.action, e.reason or "") for e in reader.list(who=name, limit=50).entries]


def attempt(system: System, page: object, name: str, password: str) -> None:
    """One refused sign-in, waited for by its audit record (the console writes it once it has decided)."""
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    before = len(audited_failures(system, name))
    sign_in(page, name, password)
    deadline = time.monotonic() + 30
    while len(audited_failures(system, name)) == before:
        assert time.monotonic() < deadline, "the console recorded no refused sign-in"
        time.sleep(0.2)
    expect(page.get_by_text("That account and password do not match")).to_be_visible()
    assert not page.locator("[data-testid=stSidebarNav]").count()


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_each_role_signs_in_and_sees_only_its_pages(system: System, browser: object, role: str) -> None:
    from playwright.sync_api import Page, expect

    page: Page = new_page(browser, system.consoles[0])  # type: ignore[assignment]
    try:
        sign_in(page, role, PASSWORD)
        wait_for_app(page)
        links = page.locator("[data-testid=stSidebarNav] a")
        # Each link's text is its icon's name, then its title.
        assert [text.strip().splitlines()[-1] for text in links.all_inner_texts()] == OFFERED[role]
        expect(page.get_by_text(f"Role: {role}")).to_be_visible()
        for title in OFFERED[role]:
            links.filter(has_text=title).click()
            wait_for_app(page)
            expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
            assert not page.locator("[data-testid=stException]").count()
        # Force is an admin's only.
        if "Queue a refund" in OFFERED[role]:
            links.filter(has_text="Queue a refund").click()
            wait_for_app(page)
            assert bool(page.get_by_text("Force: send even if").count()) is (role == "admin")
        page.screenshot(path=str(ARTIFACTS / f"browser-access-{role}.png"), full_page=True)
    finally:
        page.close()


def test_failures_in_one_console_process_lock_the_account_in_the_other(
    system: System, browser: object
) -> None:
    system.users.add("locky", PASSWORD, Role.OPERATOR)
    first: object = new_page(browser, system.consoles[0])
    second: object = new_page(browser, system.consoles[1])
    try:
        for _ in range(MAX_FAILURES - 2):
            attempt(system, first, "locky", "not the password, guessed")
        for _ in range(2):
            attempt(system, second, "locky", "not the password, guessed")
        account = system.users.get("locky")
        assert account is not None and account.locked_until, account
        # Locked for both processes: the right password is refused in the first one too.
        attempt(system, first, "locky", PASSWORD)
        assert sorted(audited_failures(system, "locky")) == sorted(
            [("sign_in_failed", "wrong account or password")] * (MAX_FAILURES - 1)
            + [("lockout", "account locked"), ("sign_in_failed", "account locked")]
        )
        # Another account is not affected.
        sign_in(second, "operator", PASSWORD)
        wait_for_app(second)
    finally:
        first.close()  # type: ignore[attr-defined]
        second.close()  # type: ignore[attr-defined]
