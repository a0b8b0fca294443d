"""Who may use the console, and who they are (stored as `requested_by` on everything they queue).

In order of precedence:

1. OpenID Connect through `st.login`, when Streamlit's secrets have an `[auth]` section.
2. A shared password from `CONSOLE_PASSWORD` (environment) or `console_password` (secrets), compared in
   constant time; the operator also gives a name, which becomes `requested_by`.
3. An open console, when `CONSOLE_OPEN=1` (the local stack sets it): no sign-in, and every page says so.

With none of these the console refuses to start and says how to configure one.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from reditus_refunds.contract import MAX_REQUESTED_BY

ENV_PASSWORD = "CONSOLE_PASSWORD"  # noqa: S105 (a variable name)
ENV_OPEN = "CONSOLE_OPEN"
ENV_OPERATOR = "CONSOLE_OPERATOR"
SECRET_PASSWORD = "console_password"  # noqa: S105 (a secret's name)
OPEN_OPERATOR = "open-console"
SESSION_IDENTITY = "console_identity"
WRONG_PASSWORD_DELAY_SECONDS = 1.0
MAX_NAME = 100
_NAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]+")


class AccessMode(StrEnum):
    OIDC = "oidc"
    PASSWORD = "password"  # noqa: S105 (a mode)
    OPEN = "open"
    UNCONFIGURED = "unconfigured"


@dataclass(frozen=True)
class Identity:
    requested_by: str
    mode: AccessMode

    @property
    def description(self) -> str:
        if self.mode is AccessMode.OPEN:
            return "open console (no sign-in)"
        if self.mode is AccessMode.OIDC:
            return "signed in with OpenID Connect"
        return "signed in with the console password"


def _secret(name: str) -> Any:
    try:
        return st.secrets.get(name)
    except (StreamlitSecretNotFoundError, FileNotFoundError):
        return None


def oidc_configured() -> bool:
    section = _secret("auth")
    return isinstance(section, Mapping) and bool(section)


def configured_password(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    password = env.get(ENV_PASSWORD) or _secret(SECRET_PASSWORD)
    return str(password) if password else None


def open_console_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ENV_OPEN, "").strip().lower() in ("1", "true", "yes")


def access_mode(env: Mapping[str, str] | None = None) -> AccessMode:
    if oidc_configured():
        return AccessMode.OIDC
    if configured_password(env):
        return AccessMode.PASSWORD
    if open_console_allowed(env):
        return AccessMode.OPEN
    return AccessMode.UNCONFIGURED


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (of UTF-8 bytes, so any text is accepted)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def clean_operator_name(text: str) -> str | None:
    """The name an operator signs in with, if it can be stored as requested_by."""
    name = " ".join(text.split())
    if not name or len(name) > min(MAX_NAME, MAX_REQUESTED_BY) or not _NAME_PATTERN.fullmatch(name):
        return None
    return name


def _oidc_identity() -> Identity | None:
    user = st.user.to_dict()
    if not user.get("is_logged_in"):
        return None
    for claim in ("email", "preferred_username", "name", "sub"):
        value = user.get(claim)
        if isinstance(value, str) and value.strip():
            return Identity(value.strip()[:MAX_REQUESTED_BY], AccessMode.OIDC)
    return Identity("oidc-user", AccessMode.OIDC)


def _draw_sign_in_header() -> None:
    st.title("Reditus refunds console")
    st.caption("Queue refunds for Reditus and see every outcome.")


def _draw_oidc_sign_in() -> None:
    _draw_sign_in_header()
    st.info("Sign in with your company account to continue.")
    if st.button("Sign in", type="primary", icon=":material/login:"):
        try:
            st.login()
        except Exception as err:  # Authlib missing or [auth] incomplete: say so instead of a traceback
            st.error(
                "OpenID Connect sign-in is configured but could not start. Check the [auth] section of "
                "the console's secrets and that `streamlit[auth]` (Authlib) is installed."
            )
            st.text(str(err)[:300])


def _draw_password_sign_in(expected: str) -> None:
    _draw_sign_in_header()
    with st.form("sign_in"):
        name = st.text_input(
            "Your name or e-mail",
            max_chars=MAX_NAME,
            help="Recorded as requested_by on every refund you queue.",
        )
        password = st.text_input("Console password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if not submitted:
        return
    operator = clean_operator_name(name or "")
    if operator is None:
        st.error("Enter your name or e-mail (up to 100 characters): it is recorded with what you queue.")
        return
    if not password_matches(password or "", expected):
        time.sleep(WRONG_PASSWORD_DELAY_SECONDS)  # slows down guessing
        st.error("That password is not right.")
        return
    st.session_state[SESSION_IDENTITY] = Identity(operator, AccessMode.PASSWORD)
    st.rerun()


def _draw_unconfigured() -> None:
    _draw_sign_in_header()
    st.error("Sign-in is not configured, so the console stays closed.")
    st.markdown(
        "Configure one of these, then restart the console:\n\n"
        "- **OpenID Connect**: an `[auth]` section in `.streamlit/secrets.toml` "
        "(`redirect_uri`, `cookie_secret`, `client_id`, `client_secret`, `server_metadata_url`).\n"
        f"- **A shared password**: the environment variable `{ENV_PASSWORD}`, or `{SECRET_PASSWORD}` in the "
        "secrets.\n"
        f"- **No sign-in** (local stack only): `{ENV_OPEN}=1`."
    )


def require_identity() -> Identity:
    """The signed-in operator; otherwise draws the sign-in page and stops the run."""
    mode = access_mode()
    if mode is AccessMode.OIDC:
        identity = _oidc_identity()
        if identity is None:
            _draw_oidc_sign_in()
            st.stop()
        return identity
    if mode is AccessMode.PASSWORD:
        stored = st.session_state.get(SESSION_IDENTITY)
        if isinstance(stored, Identity) and stored.mode is AccessMode.PASSWORD:
            return stored
        expected = configured_password()
        assert expected is not None
        _draw_password_sign_in(expected)
        st.stop()
    if mode is AccessMode.OPEN:
        operator = clean_operator_name(os.environ.get(ENV_OPERATOR, "")) or OPEN_OPERATOR
        return Identity(operator, AccessMode.OPEN)
    _draw_unconfigured()
    st.stop()


def sign_out(identity: Identity) -> None:
    if identity.mode is AccessMode.OIDC:
        st.logout()
    else:
        st.session_state.pop(SESSION_IDENTITY, None)
        st.rerun()
