"""The import rules docs/architecture.md states, checked against the code.

The rules are read from the table between the import-rules markers of that document, so the map
and the code cannot drift apart: a new rule there is checked here without touching this file.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
# Where each of our top-level packages lives.
PACKAGES = {
    "reditus_refunds": ROOT / "functions" / "reditus_refunds",
    "reditus_operators": ROOT / "functions" / "reditus_operators",
    "reditus_webhooks": ROOT / "functions" / "reditus_webhooks",
    "reditus_local": ROOT / "infra" / "reditus_local",
    "ui": ROOT / "ui",
}
KINDS = ("never", "never at module level", "never loads")


@dataclass(frozen=True)
class Rule:
    importer: str
    kind: str
    imported: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.importer} {self.kind} {', '.join(self.imported)}"


def read_rules(text: str) -> list[Rule]:
    block = re.search(r"<!-- import-rules:start -->(.*?)<!-- import-rules:end -->", text, re.S)
    assert block, "docs/architecture.md has no import-rules block"
    rules = []
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        importer, kind, imported = cells
        assert kind in KINDS, f"unknown rule kind {kind!r}"
        rules.append(Rule(importer.strip("`"), kind, tuple(re.findall(r"`([\w.]+)`", imported))))
    return rules


RULES = read_rules(DOC.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Import:
    module: str  # the absolute name imported
    line: int
    module_level: bool


def module_of(path: Path, package: str) -> str:
    parts = [package, *path.relative_to(PACKAGES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import in a file, with relative imports made absolute, and whether it runs at import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = module_level and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, module_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - (child.level - 1)]
                    base = ".".join([*parent, base] if base else parent)
                found.append(Import(base, child.lineno, module_level))
                # `from pkg import module` imports pkg.module too.
                found.extend(Import(f"{base}.{a.name}", child.lineno, module_level) for a in child.names)
            visit(child, nested)

    visit(tree, True)
    return found


def files_of(importer: str) -> list[tuple[Path, str]]:
    package = importer.split(".")[0]
    root = PACKAGES[package]
    files = sorted(root.rglob("*.py"))
    selected = [(p, module_of(p, package)) for p in files]
    return [(p, m) for p, m in selected if m == importer or m.startswith(importer + ".")]


def matches(name: str, banned: str) -> bool:
    return name == banned or name.startswith(banned + ".")


def static_violations(rule: Rule) -> list[str]:
    problems = []
    for path, module in files_of(rule.importer):
        for imp in imports_of(path, module):
            if rule.kind == "never at module level" and not imp.module_level:
                continue
            for banned in rule.imported:
                if matches(imp.module, banned):
                    problems.append(f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}")
    return problems


PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def loaded_by(module: str) -> set[str]:
    env_free = {"HISTORY_TABLE_NAME": "t", "REFUND_QUEUE_URL": "http://127.0.0.1:9/q"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env_free, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_document_states_rules_of_every_kind() -> None:
    assert {r.kind for r in RULES} == set(KINDS)
    assert len(RULES) >= 8


@pytest.mark.parametrize("rule", [r for r in RULES if r.kind != "never loads"], ids=str)
def test_static_import_rule(rule: Rule) -> None:
    if not files_of(rule.importer):
        pytest.skip(f"{rule.importer} has no modules yet")
    assert static_violations(rule) == []


@pytest.mark.parametrize("rule", [r for r in RULES if r.kind == "never loads"], ids=str)
def test_runtime_import_rule(rule: Rule) -> None:
    loaded = loaded_by(rule.importer)
    assert rule.importer.split(".")[0] in loaded
    assert sorted(loaded & set(rule.imported)) == []


def test_the_checker_finds_a_violation(tmp_path: Path) -> None:
    """Control: an import that breaks a rule, at either level, is found."""
    source = tmp_path / "bad.py"
    source.write_text(
        "import os\nfrom ..reditus_operators import cli\ndef f():\n    import reditus_local.stack\n"
    )
    found = imports_of(source, "reditus_refunds.bad")
    assert Import("reditus_operators.cli", 2, True) in found  # a relative import, made absolute
    assert Import("reditus_local.stack", 4, False) in found
    lazy = Rule("x", "never at module level", ("reditus_local",))
    assert not [i for i in found if i.module_level and matches(i.module, lazy.imported[0])]
    relative = tmp_path / "rel.py"
    relative.write_text("from .history import HistoryReader\n")
    assert Import("reditus_operators.history", 1, True) in imports_of(relative, "reditus_operators.rel")
