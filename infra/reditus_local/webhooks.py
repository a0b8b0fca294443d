"""The local stack's webhook receiver: the real Lambda handler behind a local "Function URL".

Run by the stack as its own process (a crash is contained, and it stops with the stack)::

    python -m reditus_local.webhooks --port 8200 --parent-pid PID

It imports ``reditus_webhooks.handler`` as Lambda would, with the environment the template gives
the function (its secrets' ARNs resolved to the moto server's, so the signing secrets are read from
Secrets Manager as in AWS), and serves it on 127.0.0.1 at the same paths as in AWS:
``<url>/stripe``, ``/paddle``, ``/chargebee``, ``/lemonsqueezy``, ``/polar``.

The stack generates each provider's local signing secret when it starts (``local_secrets``), puts
them into the provider's secret (``secret_values``) and keeps them in its state for
``reditus-refunds local env``, so a provider's own CLI (``stripe listen --forward-to``) or the
console's samples can sign what they send.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from reditus_webhooks import PROVIDERS
from reditus_webhooks.credentials import secret_variable
from reditus_webhooks.decide import CHARGEBEE_PASSWORD, CHARGEBEE_USERNAME, SECRET_VARIABLES
from reditus_webhooks.function_url import serve

from .child import watch_parent

HOST = "127.0.0.1"
READY = "webhook receiver ready:"
HANDLER = "reditus_webhooks.handler.lambda_handler"
WEBHOOK_URL_ENV = "REDITUS_WEBHOOK_URL"


def local_secrets() -> dict[str, str]:
    """Fresh signing secrets for one stack, by the variable `local env` exports them as.

    Each in the form the provider's own tools expect: Stripe's and Polar's ``whsec_`` (Polar's a
    Standard Webhooks base64 key), Paddle's ``pdl_ntfset_``, a Basic Auth pair for Chargebee.
    """
    return {
        SECRET_VARIABLES["stripe"]: "whsec_" + secrets.token_hex(24),
        SECRET_VARIABLES["paddle"]: "pdl_ntfset_local_" + secrets.token_urlsafe(24),
        SECRET_VARIABLES["lemonsqueezy"]: "ls_local_" + secrets.token_urlsafe(24),
        SECRET_VARIABLES["polar"]: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii"),
        CHARGEBEE_USERNAME: "reditus-local",
        CHARGEBEE_PASSWORD: secrets.token_urlsafe(24),
    }


def secret_values(local: Mapping[str, str]) -> dict[str, str]:
    """Each provider's Secrets Manager value (the JSON the receiver reads in AWS), by provider."""
    values = {
        provider: json.dumps({"secret": local[SECRET_VARIABLES[provider]]})
        for provider in PROVIDERS
        if provider in SECRET_VARIABLES
    }
    values["chargebee"] = json.dumps(
        {"username": local[CHARGEBEE_USERNAME], "password": local[CHARGEBEE_PASSWORD]}
    )
    return values


def secret_variables() -> dict[str, str]:
    """The function variable naming each provider's secret (REDITUS_WEBHOOK_<P>_SECRET_ARN)."""
    return {provider: secret_variable(provider) for provider in PROVIDERS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reditus_local.webhooks")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--handler", default=HANDLER, help="module.attribute, as in the template")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    if args.parent_pid:
        watch_parent(args.parent_pid)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    module_name, _, attribute = args.handler.rpartition(".")
    try:
        # The cold start: the handler module builds the receiver from the environment.
        handler = getattr(importlib.import_module(module_name), attribute)
    except Exception as err:  # reported in one line, as Lambda reports an init error
        print(f"webhook receiver failed to start: {type(err).__name__}: {err}", flush=True)
        return 1
    server = serve(handler, HOST, args.port)
    url = f"http://{HOST}:{server.server_address[1]}"
    print(f"{READY} {url}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
