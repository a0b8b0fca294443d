"""The providers' signing secrets: from Secrets Manager in AWS, from the environment locally.

One secret per provider, named (ARN or name) by ``REDITUS_WEBHOOK_<PROVIDER>_SECRET_ARN``. Its
value is JSON, ``{"secret": "...", "previous": "..."}`` (``previous`` while a secret is rolled),
or for Chargebee ``{"username": "...", "password": "..."}``; a plain string is taken as the
secret itself (what ``aws secretsmanager put-secret-value --secret-string whsec_...`` leaves).
An empty value means "not configured": the provider's requests are refused with 400.

Values are fetched on a provider's first request (not at cold start: only the providers in use
cost a call) through an injected ``fetch`` (Powertools' SecretsProvider in the Lambda, which
caches them). No error message here ever holds a secret's value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from reditus_webhooks import PROVIDERS
from reditus_webhooks.decide import ProviderSettings, SettingsError, WebhookSettings

# Fetch: (secret id, force a fresh value) -> the secret's text.
Fetch = Callable[[str, bool], str]

# After a bad signature, fetch the secret again (it may have just been rolled), at most this often:
# a burst of forged requests must not turn into a burst of Secrets Manager calls.
REFRESH_INTERVAL_S = 30.0


def secret_variable(provider: str) -> str:
    return f"REDITUS_WEBHOOK_{provider.upper()}_SECRET_ARN"


def secret_ids(env: Mapping[str, str]) -> dict[str, str]:
    """The Secrets Manager secret (ARN or name) of each provider that has one."""
    found = {p: env.get(secret_variable(p), "").strip() for p in PROVIDERS}
    return {p: value for p, value in found.items() if value}


def _text(doc: Mapping[str, object], name: str, provider: str) -> str:
    value = doc.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(f"the {provider} webhook secret's {name!r} must be a string")
    return value.strip() if name != "password" else value


def parse_secret(provider: str, text: str, base: ProviderSettings) -> ProviderSettings:
    """``base`` with the secrets a Secrets Manager value holds (the payment-id mapping is kept)."""
    text = text.strip()
    doc: object = None
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise SettingsError(f"the {provider} webhook secret is not valid JSON") from None
    if provider == "chargebee":
        if doc is None:
            if text:
                raise SettingsError('the chargebee webhook secret must be {"username": ..., "password": ...}')
            return replace(base, secrets=(), basic_auth=())
        if not isinstance(doc, dict):
            raise SettingsError("the chargebee webhook secret must be a JSON object")
        user, password = _text(doc, "username", provider), _text(doc, "password", provider)
        if bool(user) != bool(password):
            raise SettingsError("the chargebee webhook secret needs both username and password (or neither)")
        return replace(base, secrets=(), basic_auth=((user, password),) if user else ())
    if doc is None:
        return replace(base, secrets=(text,) if text else (), basic_auth=())
    if not isinstance(doc, dict):
        raise SettingsError(f"the {provider} webhook secret must be a JSON object or a plain string")
    current, previous = _text(doc, "secret", provider), _text(doc, "previous", provider)
    if previous and not current:
        raise SettingsError(f"the {provider} webhook secret has 'previous' but no 'secret'")
    return replace(base, secrets=tuple(s for s in (current, previous) if s), basic_auth=())


class Credentials:
    """Each provider's verification settings, with its secrets resolved (and cached by ``fetch``)."""

    def __init__(
        self,
        settings: WebhookSettings,
        ids: Mapping[str, str] | None = None,
        fetch: Fetch | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.ids = dict(ids or {})
        if self.ids and fetch is None:
            raise SettingsError("secret ids are set but nothing can fetch them")
        self._fetch = fetch
        self._monotonic = monotonic
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()

    def uses_secrets_manager(self, provider: str) -> bool:
        return provider in self.ids

    def get(self, provider: str, refresh: bool = False) -> ProviderSettings:
        """The provider's settings; raises SettingsError (a bad secret) or whatever ``fetch`` raises."""
        base = self.settings.providers[provider]
        secret_id = self.ids.get(provider)
        if secret_id is None or self._fetch is None:
            return base
        return parse_secret(provider, self._fetch(secret_id, refresh), base)

    def may_refresh(self, provider: str) -> bool:
        """Whether a bad signature may fetch the provider's secret again now (rate-limited)."""
        if provider not in self.ids:
            return False
        now = self._monotonic()
        with self._lock:
            last = self._refreshed.get(provider)
            if last is not None and now - last < REFRESH_INTERVAL_S:
                return False
            self._refreshed[provider] = now
            return True
