"""Password mode's accounts: one per person, with a role, in the history table (`user#<name>`).

Every console process reads the same items, so a lockout holds across sessions and processes.
Passwords are hashed with argon2-cffi's PasswordHasher: Argon2id (the password-hashing
competition's winner and OWASP's first choice), a random salt per hash, memory-hard parameters,
constant-time verification and `check_needs_rehash` for raising the cost later; we write none of it.
Failures are counted with conditional updates on the user item: the update that reaches the limit
sets `locked_until`, and no attempt is verified while it lies ahead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from reditus_refunds.aws_errors import BotoCoreError, ClientError, ConditionFailed
from reditus_refunds.layout import HASH_KEY, from_item, to_item
from reditus_refunds.records import iso, parse_iso, utc_now
from reditus_refunds.table import HistoryTable

from .access import Role

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

USER_PREFIX = "user#"
REGISTRY_KEY = "users#"  # the set of account names: `users list` reads one item, never a Scan
MAX_FAILURES = 5
LOCK_MINUTES = 15
MIN_PASSWORD = 12
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,63}")
_HASHER = PasswordHasher()
# Verified against when the account does not exist, so an unknown name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class UserError(ValueError):
    """Bad input for an account (name, role, password) or an account that is not there."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    failures: int = 0
    locked_until: str | None = None
    created_at: str | None = None


@dataclass(frozen=True)
class SignIn:
    """The answer to a sign-in: the user when it succeeded; `locked` when the account is locked
    (now, or by this very attempt: `just_locked`)."""

    user: User | None
    locked: bool = False
    just_locked: bool = False
    locked_until: str | None = None


def clean_name(name: str) -> str:
    cleaned = name.strip().lower()
    if not NAME_PATTERN.fullmatch(cleaned):
        raise UserError(
            "an account name is 1 to 64 characters: lowercase letters, digits and . _ @ + - "
            f"(starting with a letter or digit), not {name[:70]!r}"
        )
    return cleaned


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password has at least {MIN_PASSWORD} characters")
    if password != password.strip() or "\n" in password:
        raise UserError("a password cannot start or end with spaces or hold a line break")


class UserStore:
    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient,
        clock: Callable[[], datetime] = utc_now,
        max_failures: int = MAX_FAILURES,
        lock_for: timedelta = timedelta(minutes=LOCK_MINUTES),
    ):
        self.table = HistoryTable(table_name, client)
        self.clock = clock
        self.max_failures = max_failures
        self.lock_for = lock_for

    def _key(self, name: str) -> dict[str, Any]:
        return {HASH_KEY: {"S": USER_PREFIX + name}}

    def add(self, name: str, password: str, role: Role) -> User:
        name = clean_name(name)
        check_password(password)
        now = iso(self.clock())
        item = to_item(
            {
                HASH_KEY: USER_PREFIX + name,
                "user_name": name,
                "role": role.value,
                "password_hash": _HASHER.hash(password),
                "failures": 0,
                "created_at": now,
            }
        )
        try:
            self.table.transact(
                [
                    {
                        "Put": {
                            "TableName": self.table.table_name,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(refund_id)",
                        }
                    },
                    self._registry("ADD", name),
                ]
            )
        except ConditionFailed:
            raise UserError(f"the account {name!r} exists; remove it first to replace it") from None
        return User(name, role, created_at=now)

    def _registry(self, verb: str, name: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table.table_name,
                "Key": {HASH_KEY: {"S": REGISTRY_KEY}},
                "UpdateExpression": f"{verb} user_names :n",
                "ExpressionAttributeValues": {":n": {"SS": [name]}},
            }
        }

    def remove(self, name: str) -> None:
        name = clean_name(name)
        try:
            self.table.transact(
                [
                    {
                        "Delete": {
                            "TableName": self.table.table_name,
                            "Key": self._key(name),
                            "ConditionExpression": "attribute_exists(refund_id)",
                        }
                    },
                    self._registry("DELETE", name),
                ]
            )
        except ConditionFailed:
            raise UserError(f"no account {name!r}") from None

    def get(self, name: str) -> User | None:
        item = self.table.get_item(USER_PREFIX + name, consistent=True)
        return _user(item) if item else None

    def list(self) -> list[User]:
        registry = self.table.get_item(REGISTRY_KEY, consistent=True) or {}
        names = sorted(str(n) for n in registry.get("user_names", set()))
        found = self.table.batch_get([self._key(n) for n in names], consistent=True)
        return [_user(found[USER_PREFIX + n]) for n in names if USER_PREFIX + n in found]

    def sign_in(self, name: str, password: str) -> SignIn:
        """Check a password; count a failure, and lock the account at the limit."""
        try:
            name = clean_name(name)
        except UserError:
            _verify(_DUMMY_HASH, password)
            return SignIn(None)
        item = self.table.get_item(USER_PREFIX + name, consistent=True)
        if item is None:
            _verify(_DUMMY_HASH, password)
            return SignIn(None)
        user = _user(item)
        now = self.clock()
        if user.locked_until and parse_iso(user.locked_until) > now:
            return SignIn(None, locked=True, locked_until=user.locked_until)
        if _verify(str(item.get("password_hash", "")), password):
            if user.failures or user.locked_until:
                self._update(name, "SET failures = :zero REMOVE locked_until", {":zero": {"N": "0"}})
            return SignIn(user)
        return self._failed(name, now)

    def _failed(self, name: str, now: datetime) -> SignIn:
        try:
            response = self.table.client.update_item(
                TableName=self.table.table_name,
                Key=self._key(name),
                UpdateExpression="ADD failures :one",
                # Not while locked: a failure counted then would lock it again right after.
                ConditionExpression="attribute_exists(refund_id) AND "
                "(attribute_not_exists(locked_until) OR locked_until <= :now)",
                ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"S": iso(now)}},
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return SignIn(None, locked=True)  # locked meanwhile by another process, or removed
            raise self.table.error(err) from None
        except BotoCoreError as err:
            raise self.table.error(err) from None
        failures = int(response["Attributes"]["failures"]["N"])
        if failures < self.max_failures:
            return SignIn(None)
        until = iso(now + self.lock_for)
        try:
            # Only the update that saw this count locks; it starts the next round at zero.
            self._update(
                name,
                "SET locked_until = :until, failures = :zero",
                {":until": {"S": until}, ":zero": {"N": "0"}, ":seen": {"N": str(failures)}},
                condition="failures = :seen",
            )
        except ConditionFailed:
            return SignIn(None, locked=True)
        return SignIn(None, locked=True, just_locked=True, locked_until=until)

    def _update(
        self, name: str, expression: str, values: dict[str, Any], condition: str | None = None
    ) -> None:
        kwargs: dict[str, Any] = {
            "TableName": self.table.table_name,
            "Key": self._key(name),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": values,
        }
        if condition:
            kwargs["ConditionExpression"] = condition
        self.table.update(kwargs)


def _verify(hashed: str, password: str) -> bool:
    try:
        return bool(_HASHER.verify(hashed, password))
    except (VerificationError, InvalidHashError):
        return False


def _user(item: dict[str, Any]) -> User:
    return User(
        name=str(item.get("user_name", str(item[HASH_KEY])[len(USER_PREFIX) :])),
        role=Role(str(item.get("role", "viewer"))),
        failures=int(item.get("failures", 0)),
        locked_until=item.get("locked_until"),
        created_at=item.get("created_at"),
    )


def user_from_item(item: dict[str, Any]) -> User:
    return _user(from_item(item))
