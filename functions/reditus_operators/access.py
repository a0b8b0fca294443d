"""Who may do what: the three roles and the one check every operator use case makes.

The console and the CLI both pass an `Actor` (who, with which role, through which channel) to the
use cases in `actions.py`; the check is there, server-side, so a hidden button is never the only
thing that stops someone. A refusal is audited (see `actions.authorize`) and raises AccessDenied.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown role {text!r}; use viewer, operator or admin") from None


class Action(StrEnum):
    """What an operator does; also the audit log's `action` names."""

    VIEW = "view"
    EXPORT = "export"
    QUEUE = "queue"
    BULK_UPLOAD = "bulk_upload"
    REQUEUE = "requeue"
    SUBMIT = "submit"  # a partial refund's review: queue it
    DISMISS = "dismiss"  # a partial refund's review: close it, queue nothing
    FORCE = "force"  # queue although the history has a 200 or a refund in flight
    REDRIVE = "redrive"
    DELETE = "delete"
    AUDIT = "audit"  # read the audit log
    SIGN_IN_FAILED = "sign_in_failed"
    LOCKOUT = "lockout"


_VIEWER = frozenset({Action.VIEW, Action.EXPORT})
_OPERATOR = _VIEWER | {Action.QUEUE, Action.BULK_UPLOAD, Action.REQUEUE, Action.SUBMIT, Action.DISMISS}
_ADMIN = _OPERATOR | {Action.FORCE, Action.REDRIVE, Action.DELETE, Action.AUDIT}
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: _VIEWER,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
}


def allowed(role: Role, action: Action) -> bool:
    return action in PERMISSIONS[role]


class AccessDenied(PermissionError):
    """The actor's role does not allow the action; the text says which role would."""

    def __init__(self, actor: Actor, action: Action):
        needed = next(r for r in Role if allowed(r, action))
        super().__init__(
            f"{actor.identity} ({actor.role.value}) may not {action.value.replace('_', ' ')}: "
            f"it needs the {needed.value} role"
        )
        self.actor = actor
        self.action = action


@dataclass(frozen=True)
class Actor:
    """Who acts. `identity` is what is recorded (OIDC e-mail or sub, the account name, the caller's
    STS ARN); `name` is an optional human-readable name recorded next to it, never instead of it."""

    identity: str
    role: Role
    channel: str  # "console" or "cli"
    name: str | None = None

    def may(self, action: Action) -> bool:
        return allowed(self.role, action)

    @property
    def requested_by(self) -> str:
        return self.identity
