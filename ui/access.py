"""Who may use the console, with which role, and who they are (recorded on everything they do).

In order of precedence:

1. OpenID Connect through `st.login`, when Streamlit's secrets have an `[auth]` section; the
   `[access]` section's allow-lists (e-mails, e-mail domains, groups of a configurable claim) map
   an identity to a role, and an identity that matches none is refused.
2. Password mode (`CONSOLE_SIGN_IN=password`): one account per person in the history table
   (`reditus-refunds users add`), a role each, locked after repeated failures (reditus_operators.users).
3. An open console, when `CONSOLE_OPEN=1` and the system is the local stack: no sign-in, the admin
   role, and every page says so. Against anything else it is refused.

With none of these the console refuses to start and says how to configure one.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from reditus_operators.access import Role
from reditus_refunds.contract import MAX_REQUESTED_BY

ENV_PASSWORD = "CONSOLE_PASSWORD"  # noqa: S105 (a variable name)
ENV_OPEN = "CONSOLE_OPEN"
ENV_OPERATOR = "CONSOLE_OPERATOR"
ENV_SIGN_IN = "CONSOLE_SIGN_IN"
SECRET_SIGN_IN = "console_sign_in"  # noqa: S105 (a setting's name)
SECRET_ACCESS = "access"  # noqa: S105 (a section's name)
DEFAULT_GROUP_CLAIM = "groups"
SECRET_PASSWORD = "console_password"  # noqa: S105 (a secret's name)
OPEN_OPERATOR = "open-console"
SESSION_IDENTITY = "console_identity"
SESSION_ENDED = "console_session_ended"
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
    role: Role = Role.VIEWER

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
    """The retired shared password (its presence is refused with a message saying what replaced it)."""
    env = os.environ if env is None else env
    password = env.get(ENV_PASSWORD) or _secret(SECRET_PASSWORD)
    return str(password) if password else None


def password_mode(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    chosen = env.get(ENV_SIGN_IN) or _secret(SECRET_SIGN_IN) or ""
    return str(chosen).strip().lower() == "password"


def oidc_role(user: Mapping[str, Any], rules: Mapping[str, Any] | None) -> Role | None:
    """The highest role the allow-lists give this identity (e-mail, its domain, its groups), or None."""
    rules = rules or {}
    found: list[Role] = []
    email = str(user.get("email") or "").strip().lower()
    verified = user.get("email_verified", True) is not False  # an unverified e-mail proves nothing
    for name, role in dict(rules.get("emails") or {}).items():
        if email and verified and email == str(name).strip().lower():
            found.append(Role.parse(str(role)))
    domain = email.rpartition("@")[2] if "@" in email else ""
    for name, role in dict(rules.get("domains") or {}).items():
        if domain and verified and domain == str(name).strip().lower().lstrip("@"):
            found.append(Role.parse(str(role)))
    claim = str(rules.get("group_claim") or DEFAULT_GROUP_CLAIM)
    groups = user.get(claim) or []
    groups = [groups] if isinstance(groups, str) else list(groups) if isinstance(groups, list | tuple) else []
    for name, role in dict(rules.get("groups") or {}).items():
        if str(name) in {str(g) for g in groups}:
            found.append(Role.parse(str(role)))
    order = list(Role)
    return max(found, key=order.index) if found else None


def open_console_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ENV_OPEN, "").strip().lower() in ("1", "true", "yes")


def access_mode(env: Mapping[str, str] | None = None) -> AccessMode:
    if oidc_configured():
        return AccessMode.OIDC
    if password_mode(env) or configured_password(env):
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
    """The signed-in identity (its e-mail, else its `sub`), with the role the allow-lists give it."""
    user = st.user.to_dict()
    if not user.get("is_logged_in"):
        return None
    # An unverified e-mail proves nothing about who this is: then the `sub` is what gets recorded.
    verified = user.get("email_verified", True) is not False
    claims = [user.get("email") if verified else None, user.get("sub")]
    who = next((c.strip() for c in claims if isinstance(c, str) and c.strip()), "")
    rules = _secret(SECRET_ACCESS)
    role = oidc_role(user, rules if isinstance(rules, Mapping) else None)
    if not who or role is None:
        _draw_sign_in_header()
        st.error(
            f"{who or 'This account'} is not allowed to use this console. Ask an administrator to add your "
            "e-mail, domain or group to the console's allow-list.",
            icon=":material/block:",
        )
        if st.button("Sign out", icon=":material/logout:"):
            st.logout()
        st.stop()
    return Identity(who[:MAX_REQUESTED_BY], AccessMode.OIDC, role)


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


def _draw_password_sign_in() -> None:
    from ui import data  # the store lives with the console's other AWS adapters

    _draw_sign_in_header()
    if configured_password() and not password_mode():
        st.error(
            f"The shared console password ({ENV_PASSWORD}) is retired: every person has an account now. "
            f"Create them with `reditus-refunds users add NAME --role viewer|operator|admin`, then set "
            f"{ENV_SIGN_IN}=password."
        )
        st.stop()
    ended = st.session_state.pop(SESSION_ENDED, None)
    if ended:
        st.warning(ended, icon=":material/logout:")
    with st.form("sign_in"):
        name = st.text_input("Account", max_chars=MAX_NAME)
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if not submitted:
        return
    if not (name or "").strip():
        st.error("Enter your account name.")
        return
    try:
        user = data.sign_in(name or "", password or "")
    except data.AWS_ERRORS as err:
        data.show_sign_in_problem(err)
        return
    if user is None:
        st.error("That account and password do not match, or the account is locked for a while.")
        return
    st.session_state[SESSION_IDENTITY] = Identity(user.name, AccessMode.PASSWORD, user.role)
    st.rerun()


def _still_valid(stored: Identity) -> Identity | None:
    """The session's account as it is now (read at most every few seconds, ui.data.current_account):
    a removed or locked account loses the session at its next page load, a changed role applies."""
    from ui import data

    try:
        user = data.current_account(stored.requested_by)
    except data.AWS_ERRORS as err:
        _draw_sign_in_header()
        data.show_sign_in_problem(err)
        st.stop()
    if user is None or data.locked_now(user):
        st.session_state.pop(SESSION_IDENTITY, None)
        st.session_state[SESSION_ENDED] = (
            f"The account {stored.requested_by} was removed or locked: sign in again."
        )
        return None
    if user.role is not stored.role:
        stored = Identity(stored.requested_by, AccessMode.PASSWORD, user.role)
        st.session_state[SESSION_IDENTITY] = stored
    return stored


def _draw_unconfigured() -> None:
    _draw_sign_in_header()
    st.error("Sign-in is not configured, so the console stays closed.")
    st.markdown(
        "Configure one of these, then restart the console:\n\n"
        "- **OpenID Connect**: an `[auth]` section in `.streamlit/secrets.toml` "
        "(`redirect_uri`, `cookie_secret`, `client_id`, `client_secret`, `server_metadata_url`).\n"
        f"- **Accounts with passwords**: `{ENV_SIGN_IN}=password`, and one account per person "
        "(`reditus-refunds users add NAME --role viewer|operator|admin`).\n"
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
            current = _still_valid(stored)
            if current is not None:
                return current
        _draw_password_sign_in()
        st.stop()
    if mode is AccessMode.OPEN:
        from ui import data

        if not data.open_console_target_is_local():
            _draw_sign_in_header()
            st.error(
                f"{ENV_OPEN}=1 opens the console without sign-in, which is only allowed against the local "
                "stack; this console points at another system. Configure OpenID Connect or accounts "
                f"({ENV_SIGN_IN}=password) instead."
            )
            st.stop()
        operator = clean_operator_name(os.environ.get(ENV_OPERATOR, "")) or OPEN_OPERATOR
        return Identity(operator, AccessMode.OPEN, Role.ADMIN)
    _draw_unconfigured()
    st.stop()


def sign_out(identity: Identity) -> None:
    if identity.mode is AccessMode.OIDC:
        st.logout()
    else:
        st.session_state.pop(SESSION_IDENTITY, None)
        st.rerun()
