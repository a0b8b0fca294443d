"""The console in a real browser: Debian's Chromium driven by Playwright, against `make run`'s stack.

`reditus-refunds local up` starts moto, the Reditus simulator, the worker and the console; the test
queues a refund for a demo payment, waits for it to reach 200 in History, and opens its detail.
Screenshots of every page go to test-artifacts/screenshots/ for a person to look at after the run.

Chromium comes from `make browser` (infra/install-browser.sh), which `make test` runs first: when it
is missing, this test fails rather than skips.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_PAYMENT = "pay_demo_1001"
START_TIMEOUT = 120.0
SETTLE_TIMEOUT_MS = 60_000


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    console_url: str
    log: Path


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`make run`'s command, on free ports and a fresh data folder, stopped with Ctrl-C at the end."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "browser-local-stack.log"
    console_port = free_port()
    command = [
        str(Path(sys.executable).with_name("reditus-refunds")),
        "local",
        "up",
        "--fresh",
        "--data-dir",
        str(tmp_path_factory.mktemp("local-stack")),
        "--console-port",
        str(console_port),
        "--moto-port",
        str(free_port()),
        "--simulator-port",
        str(free_port()),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("CONSOLE_PASSWORD", "REDITUS_STACK_NAME")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{console_port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not _healthy(url):
            if process.poll() is not None:
                pytest.fail(
                    f"`reditus-refunds local up` exited with {process.returncode}:\n{log.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the console did not answer within {START_TIMEOUT:.0f} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield RunningStack(process, url, log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # as Ctrl-C: the stack stops its parts in order
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started, and only that
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser_page(local_stack: RunningStack) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (`make browser`, infra/install-browser.sh); "
            "run `bash infra/install-browser.sh` as root"
        )
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1500})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


SETTLED = """() => !document.querySelector(
    '[data-testid=stStatusWidget], [data-testid=stSkeleton], [data-stale=true]'
)"""


def wait_for_app(page: object) -> None:
    """Streamlit has drawn the page: no script running, no placeholder or stale element left."""
    page.wait_for_selector("[data-testid=stSidebarNav]")  # type: ignore[attr-defined]
    for _ in range(2):  # a fragment may rerun the page right after it settled once
        page.wait_for_function(SETTLED, timeout=30_000)  # type: ignore[attr-defined]
        page.wait_for_timeout(700)  # type: ignore[attr-defined]


def screenshot(page: object, name: str) -> None:
    wait_for_app(page)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_queue_a_refund_and_follow_it_to_200_in_history(
    local_stack: RunningStack, browser_page: object
) -> None:
    from playwright.sync_api import Page, expect

    page: Page = browser_page  # type: ignore[assignment]
    page.goto(local_stack.console_url)
    page.wait_for_selector("[data-testid=stApp]")
    page.wait_for_timeout(2000)
    if page.get_by_text("Sign-in is not configured").count():
        pytest.fail("the local stack started the console closed: it must set CONSOLE_OPEN=1 for it")
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Queue a refund")).to_be_visible()
    # The local stack runs the console open, and says so on every page.
    expect(page.get_by_text("Open console: no sign-in (local stack)")).to_be_visible()
    screenshot(page, "01-queue-a-refund")

    page.get_by_role("textbox", name="Payment id").fill(DEMO_PAYMENT)
    page.get_by_role("textbox", name="Note").fill("browser test: refunded by support")
    page.get_by_role("button", name="Queue refund").click()
    expect(page.get_by_text("Refund queued.")).to_be_visible()
    refund_id = page.locator("[data-testid=stCode] code").first.inner_text().strip()
    assert len(refund_id) == 36, refund_id
    # The page watches the refund it just queued until Reditus has answered.
    expect(page.get_by_text("refunded · 200")).to_be_visible(timeout=SETTLE_TIMEOUT_MS)
    screenshot(page, "02-refund-queued")

    # Its link opens the refund's detail in History.
    page.get_by_role("link", name="Open it in History").click()
    wait_for_app(page)
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    assert f"refund_id={refund_id}" in page.url
    detail = page.locator(".st-key-refund_detail")
    expect(detail.get_by_text(refund_id, exact=True)).to_be_visible()
    expect(detail.get_by_text("refunded · 200", exact=True)).to_be_visible(timeout=SETTLE_TIMEOUT_MS)
    expect(detail.get_by_text(DEMO_PAYMENT, exact=True)).to_be_visible()
    expect(detail.get_by_text("browser test: refunded by support", exact=True)).to_be_visible()
    # Requested by (a text field; the actions table below names the same identity in a grid cell).
    expect(detail.get_by_test_id("stText").filter(has_text="open-console")).to_be_visible()
    expect(detail.get_by_text("Attempts", exact=True).first).to_be_visible()
    screenshot(page, "03-history-refund-detail")

    # History's headline figures count it (from the day counters).
    page.get_by_role("button", name="Close").click()
    wait_for_app(page)
    refunded = page.locator("[data-testid=stMetric]").filter(has_text="Refunded")
    expect(refunded.locator("[data-testid=stMetricValue]")).to_have_text("1", timeout=SETTLE_TIMEOUT_MS)
    screenshot(page, "04-history")


def test_every_page_draws_and_is_saved_for_people_to_look_at(
    local_stack: RunningStack, browser_page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    page: Page = browser_page  # type: ignore[assignment]
    page.goto(f"{local_stack.console_url}/bulk_upload")
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Bulk upload")).to_be_visible()
    csv_file = tmp_path / "refunds.csv"
    csv_file.write_text("payment_id,note\npay_demo_1002,monthly refunds\n,blank\npay_demo_1002,again\n")
    page.locator("input[type=file]").set_input_files(str(csv_file))
    expect(page.get_by_role("button", name="Queue 1 refund(s)")).to_be_visible()
    page.get_by_role("button", name="Dry run").click()
    expect(page.get_by_text("Dry run, nothing was sent")).to_be_visible()
    screenshot(page, "05-bulk-upload-preview")

    page.goto(f"{local_stack.console_url}/dead_letters")
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    expect(page.get_by_text("The dead-letter queue is empty.")).to_be_visible()
    screenshot(page, "06-dead-letters")
    assert not page.locator("[data-testid=stException]").count()
