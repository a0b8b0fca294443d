"""The local stack's webhook receiver settings: generated secrets, where they go, what wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reditus_local.resources import TemplateModel
from reditus_local.stack import LocalStack, StackOptions
from reditus_local.webhooks import local_secrets, secret_values
from reditus_webhooks import PROVIDERS
from reditus_webhooks.credentials import parse_secret
from reditus_webhooks.decide import CHARGEBEE_PASSWORD, CHARGEBEE_USERNAME, SECRET_VARIABLES, ProviderSettings

EXPORTED = {*SECRET_VARIABLES.values(), CHARGEBEE_USERNAME, CHARGEBEE_PASSWORD}


def test_each_stack_gets_its_own_secrets_for_every_provider() -> None:
    first, second = local_secrets(), local_secrets()
    assert set(first) == EXPORTED
    assert all(first[name] != second[name] for name in EXPORTED - {CHARGEBEE_USERNAME})
    assert first[SECRET_VARIABLES["stripe"]].startswith("whsec_")
    assert first[SECRET_VARIABLES["polar"]].startswith("whsec_")  # Standard Webhooks form


def test_the_secrets_manager_values_configure_each_provider_with_its_secret() -> None:
    local = local_secrets()
    values = secret_values(local)
    assert set(values) == set(PROVIDERS)
    for provider in PROVIDERS:
        settings = parse_secret(provider, values[provider], ProviderSettings(provider))
        assert settings.configured
        if provider == "chargebee":
            assert settings.basic_auth == ((local[CHARGEBEE_USERNAME], local[CHARGEBEE_PASSWORD]),)
        else:
            assert settings.secrets == (local[SECRET_VARIABLES[provider]],)


def test_the_stack_puts_them_into_the_receivers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in EXPORTED:
        monkeypatch.delenv(name, raising=False)
    # One set in the shell wins: `stripe listen` signs with its own.
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_stripe_listen")
    stack = LocalStack(StackOptions(data_dir=tmp_path))
    assert stack.webhook_secrets["STRIPE_WEBHOOK_SECRET"] == "whsec_from_stripe_listen"
    values = stack._webhook_secret_values(TemplateModel.load())
    assert set(values) == {
        "StripeWebhookSecret",
        "PaddleWebhookSecret",
        "ChargebeeWebhookSecret",
        "LemonSqueezyWebhookSecret",
        "PolarWebhookSecret",
    }
    assert json.loads(values["StripeWebhookSecret"]) == {"secret": "whsec_from_stripe_listen"}
    assert json.loads(values["PaddleWebhookSecret"]) == {
        "secret": stack.webhook_secrets["PADDLE_WEBHOOK_SECRET"]
    }
    # The submitter's API key secret is not one of them.
    assert "ReditusApiKeySecret" not in values
