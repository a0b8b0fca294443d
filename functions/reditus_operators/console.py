"""Starting the Streamlit console: `reditus-refunds console` and the local stack both use this.

The app is found through the installed `ui` package (a checkout and a wheel alike), and every
setting of .streamlit/config.toml is passed as a flag, because Streamlit reads that file only from
the directory it starts in: the console behaves the same from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .config import SystemConfig
from .csv_import import MAX_BYTES

HOST = "127.0.0.1"
DEFAULT_PORT = 8501
PORT_ENV = "REDITUS_LOCAL_CONSOLE_PORT"

# The console's Streamlit settings (kept equal to .streamlit/config.toml by tests/test_cli.py).
STREAMLIT_OPTIONS: dict[str, str] = {
    "browser.gatherUsageStats": "false",
    "server.maxUploadSize": str(MAX_BYTES // (1024 * 1024)),
    "server.headless": "true",
    "server.address": HOST,
    "client.showErrorDetails": "none",
    "client.toolbarMode": "minimal",
    "theme.primaryColor": "#1c7ed6",
    "theme.base": "light",
}


class ConsoleError(RuntimeError):
    """The console cannot start; the text says why and what to do."""


def console_app() -> Path:
    """ui/app.py of the installed `ui` package (found without importing it, which needs Streamlit)."""
    spec = importlib.util.find_spec("ui")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        app = Path(location) / "app.py"
        if app.is_file():
            return app
    raise ConsoleError(
        "the console is not installed (no `ui` package with app.py): "
        "install the tool with its console extra, `pip install 'reditus-refunds[console]'`"
    )


def console_argv(port: int, app: Path | None = None) -> list[str]:
    """`streamlit run ...` with the console's settings as flags (run with `python -m`)."""
    flags = [part for name, value in STREAMLIT_OPTIONS.items() for part in (f"--{name}", value)]
    return ["streamlit", "run", str(app or console_app()), *flags, "--server.port", str(port)]


def port_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConsoleError(f"{PORT_ENV} must be a port number, got {raw!r}")
    return int(raw)


def port_is_free(port: int, host: str = HOST) -> bool:
    # SO_REUSEADDR as the servers set it: a port in TIME_WAIT after a restart is free for them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_port(port: int) -> int:
    """The port, if the console can listen on it (ConsoleError says what to do otherwise)."""
    if not 0 < port < 65536:
        raise ConsoleError(f"--port must be between 1 and 65535, got {port}")
    if not port_is_free(port):
        raise ConsoleError(f"port {port} is taken; choose another with --port or {PORT_ENV}")
    return port


def system_env(config: SystemConfig) -> dict[str, str]:
    """What the console and other tools need to find a system (the `local env` variables)."""
    env = {
        "HISTORY_TABLE_NAME": config.table_name,
        "REFUND_QUEUE_URL": config.queue_url,
        "DEAD_LETTER_QUEUE_URL": config.dlq_url,
        "AWS_REGION": config.region,
        "AWS_DEFAULT_REGION": config.region,
    }
    if config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = config.endpoint_url
    if config.webhook_url:
        env["REDITUS_WEBHOOK_URL"] = config.webhook_url
    return env


def console_env(config: SystemConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The console process's environment: `base` (default: ours) plus the system it works on."""
    env = {**(os.environ if base is None else base), **system_env(config)}
    # The system is named by these variables now; a stack name left over would win over them.
    env.pop("REDITUS_STACK_NAME", None)
    if config.local:
        # moto takes any credentials; real ones must not travel to a local console.
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        env.setdefault("CONSOLE_OPEN", "1")  # the local stack's console runs open, and says so
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
    return env


def run_console(config: SystemConfig, port: int | None = None) -> int:
    """Run the console in the foreground until it stops (Ctrl-C); returns its exit code."""
    app = console_app()
    port = check_port(port or port_from_env())
    argv = [sys.executable, "-m", *console_argv(port, app)]
    try:
        return subprocess.call(argv, env=console_env(config))  # noqa: S603 - our own argv, no shell
    except KeyboardInterrupt:
        return 130
