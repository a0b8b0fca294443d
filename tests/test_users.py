"""Password mode's accounts (issue 14): `reditus-refunds users add|list|remove`, and the lockout that
holds across sessions because it lives on the account item."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from reditus_operators.access import Role
from reditus_operators.users import MAX_FAILURES, UserStore
from tests import test_cli
from tests.conftest import AwsFixture
from tests.test_cli import System

system = test_cli.system  # the CLI's fixture: moto resources made from template.yaml
PASSWORD = "a long enough password"


@pytest.fixture
def piped_stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Standard input is a real pipe (as in `echo ... | reditus-refunds users add`)."""
    read_end, write_end = os.pipe()
    reader = os.fdopen(read_end, "r")

    def feed(text: str) -> None:
        os.write(write_end, text.encode())
        os.close(write_end)
        monkeypatch.setattr(sys, "stdin", reader)

    yield feed
    reader.close()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_users_add_reads_the_password_from_a_pipe(system: System, piped_stdin: Callable[[str], None]) -> None:
    piped_stdin(PASSWORD + "\n")
    run = system.run("users", "add", "Ana", "--role", "operator")
    assert run.code == 0, run.err
    assert "added ana (operator)" in run.err and PASSWORD not in run.out + run.err
    store = UserStore(system.table, system.dynamodb)
    assert store.sign_in("ana", PASSWORD).user == store.get("ana")
    item = system.dynamodb.get_item(TableName=system.table, Key={"refund_id": {"S": "user#ana"}})["Item"]
    assert item["password_hash"]["S"].startswith("$argon2id$") and PASSWORD not in json.dumps(item)


def test_users_add_prompts_twice_on_a_terminal(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    answers: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": answers.pop(0))
    answers[:] = [PASSWORD, PASSWORD + "x"]
    run = system.run("users", "add", "ben", "--role", "viewer")
    assert run.code == 2 and "differ" in run.err and not answers
    assert UserStore(system.table, system.dynamodb).get("ben") is None
    answers[:] = [PASSWORD, PASSWORD]
    assert system.run("users", "add", "ben", "--role", "viewer").code == 0 and not answers
    assert UserStore(system.table, system.dynamodb).get("ben") is not None


def test_users_list_and_remove(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, role in (("ana", "admin"), ("ben", "viewer")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        assert system.run("users", "add", name, "--role", role).code == 0
    listed = [json.loads(line) for line in system.run("users", "list", "--json").out.splitlines()]
    assert [(u["name"], u["role"], u["locked_until"]) for u in listed] == [
        ("ana", "admin", None),
        ("ben", "viewer", None),
    ]
    table = system.run("users", "list").out
    assert "NAME" in table and "ana" in table and "viewer" in table and "$argon2" not in table
    run = system.run("users", "remove", "ben")
    assert run.code == 0 and "removed ben" in run.err
    assert [json.loads(line)["name"] for line in system.run("users", "list", "--json").out.splitlines()] == [
        "ana"
    ]
    again = system.run("users", "remove", "ben")
    assert again.code == 2 and "no account 'ben'" in again.err


@pytest.mark.parametrize(
    ("name", "password", "role", "says"),
    [
        ("ana", "short", "viewer", "at least 12 characters"),
        ("ana", " " + PASSWORD, "viewer", "cannot start or end with spaces"),
        ("an a", PASSWORD, "viewer", "account name"),
        ("ana", PASSWORD, "root", "invalid choice"),
    ],
)
def test_users_add_refuses_bad_input_and_saves_nothing(
    system: System, monkeypatch: pytest.MonkeyPatch, name: str, password: str, role: str, says: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    try:
        run = system.run("users", "add", name, "--role", role)
    except SystemExit as exit_:  # argparse's own refusal of --role
        assert exit_.code == 2
        run = test_cli.Run(2, "", system.capsys.readouterr().err)
    assert run.code == 2 and says in run.err, run
    assert password not in run.err or len(password) < 6
    assert system.run("users", "list", "--json").out == ""


def test_a_second_account_of_the_same_name_is_refused(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    for expected in (0, 2):
        monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        assert system.run("users", "add", "ana", "--role", "viewer").code == expected
    assert UserStore(system.table, system.dynamodb).sign_in("ana", PASSWORD).user is not None


# ---- lockout on the account item ------------------------------------------------------------------------
def test_repeated_failures_lock_the_account_for_a_while(aws: AwsFixture) -> None:
    now = [datetime(2026, 11, 30, 9, 0, tzinfo=UTC)]
    store = UserStore(aws.table, aws.dynamodb, clock=lambda: now[0])
    store.add("ana", PASSWORD, Role.OPERATOR)
    for attempt in range(1, MAX_FAILURES + 1):
        result = store.sign_in("ana", "wrong password here")
        assert result.user is None and result.just_locked is (attempt == MAX_FAILURES)
    # Locked: even the right password is refused, without being checked, until the time is up.
    assert store.sign_in("ana", PASSWORD).locked
    now[0] += timedelta(minutes=14)
    assert store.sign_in("ana", PASSWORD).user is None
    now[0] += timedelta(minutes=2)
    assert store.sign_in("ana", PASSWORD).user is not None
    # Another store (another process) sees the same account and counts on the same item.
    other = UserStore(aws.table, aws.dynamodb, clock=lambda: now[0])
    for _ in range(MAX_FAILURES - 1):
        store.sign_in("ana", "wrong password here")
    assert other.sign_in("ana", "wrong password here").just_locked
    assert store.sign_in("ana", PASSWORD).locked
