"""The IAM side of the template tests: what a Lambda's code calls on DynamoDB, derived from its source
by AST, and what a role in template.yaml grants, per service.

tests/test_template.py (the submitter) and tests/test_template_webhooks.py (the receiver) each
say where their function's calls start; the walk from there to the DynamoDB client is the same:
a use case calls a store (`self.store.<m>(`, `self.events.<m>(`), the store's methods reach the
table's (`self.table.<m>(`, reditus_refunds/table.py), whose methods call the client
(`self.client.<op>(`). A transaction counts as the kinds of item (Put, Update...) the reached code
builds: IAM has no action of its own for TransactWriteItems' items.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "functions"
# TransactWriteItems is authorised through the actions of its items.
TRANSACT_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
Functions = dict[str, ast.FunctionDef]


def parse(relative: str) -> ast.Module:
    """A module of functions/, e.g. "reditus_refunds/table.py"."""
    return ast.parse((FUNCTIONS_DIR / relative).read_text(encoding="utf-8"))


def receiver(node: ast.expr) -> str | None:
    """'self.table' for the call self.table.transact(...)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def calls_on(tree: ast.AST, on: str) -> set[str]:
    """Names of the methods called as <on>.<name>(...) anywhere in tree."""
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and receiver(node.func.value) == on
    }


def functions(tree: ast.Module) -> Functions:
    """Module-level functions and the methods of every class, by name."""
    found: Functions = {}
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        for member in members:
            if isinstance(member, ast.FunctionDef):
                found[member.name] = member
    return found


def reached(functions: Functions, entries: set[str], owner: str) -> set[str]:
    """The functions reached from entries through self.<m>(, <owner>.<m>( and <function>( calls."""
    found: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in found or name not in functions:
            continue
        found.add(name)
        node = functions[name]
        callees = calls_on(node, "self") | calls_on(node, owner)
        callees |= {
            c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        }
        todo += sorted(callees)
    return found


def entered(functions: Functions, entries: set[str], owner: str) -> set[str]:
    """What the calls `entries` into the class `owner` reach; each must be one of its methods."""
    assert entries and entries <= set(functions), f"calls not in {owner}: {entries - set(functions)}"
    return reached(functions, entries, owner)


def transact_kinds(functions: Functions, names: set[str]) -> set[str]:
    """The kinds of transaction item (Put, Update...) the named functions build."""
    kinds: set[str] = set()
    for name in names:
        for literal in ast.walk(functions[name]):
            if isinstance(literal, ast.Dict):
                keys = [k.value for k in literal.keys if isinstance(k, ast.Constant)]
                kinds |= {k for k in keys if isinstance(k, str) and k in TRANSACT_ITEM_ACTIONS}
    return kinds


def dynamodb_actions(stores: Iterable[tuple[Functions, set[str]]]) -> set[str]:
    """The IAM actions behind the table calls (`self.table.<m>(`) of the reached store methods."""
    stores = list(stores)
    table = functions(parse("reditus_refunds/table.py"))
    table_calls = set().union(
        *(calls_on(code[name], "self.table") for code, names in stores for name in names)
    )
    assert table_calls <= set(table), f"table calls not in HistoryTable: {table_calls - set(table)}"
    ops = set().union(*(calls_on(table[name], "self.client") for name in reached(table, table_calls, "")))
    iam = {"".join(part.title() for part in op.split("_")) for op in ops - {"transact_write_items"}}
    if "transact_write_items" in ops:
        kinds = set().union(*(transact_kinds(code, names) for code, names in stores))
        iam |= {TRANSACT_ITEM_ACTIONS[kind] for kind in kinds}
    return {f"dynamodb:{action}" for action in iam}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def grants(statements: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, list[Any]]]:
    """A role's statements as (actions by service, resources by service), in the template's order.

    Every statement must allow, name its actions and resources (no NotAction/NotResource), stay
    within one service, never use a wildcard action, and be scoped to resources (X-Ray has no
    resource-level permissions, so it alone may say "*").
    """
    by_service: dict[str, set[str]] = {}
    resources: dict[str, list[Any]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        actions = as_list(statement["Action"])
        services = {action.partition(":")[0] for action in actions}
        assert len(services) == 1, f"one service per statement: {statement}"
        (service,) = services
        for resource in as_list(statement["Resource"]):
            assert resource != "*" or service == "xray", f"unscoped statement {statement}"
        for action in actions:
            assert "*" not in action, f"wildcard action {action}"
            by_service.setdefault(service, set()).add(action.partition(":")[2])
        resources.setdefault(service, []).extend(as_list(statement["Resource"]))
    return by_service, resources
