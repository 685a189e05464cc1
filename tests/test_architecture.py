"""The import rules of the design ("Which way the arrows point"), held by reading the source.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`, relative
ones, and importlib.import_module / __import__ calls with a literal name. `from X import Y`
is recorded as X.Y, since Y may be a submodule; rules match dotted-name prefixes.

Each rule is its own test; a failure lists every offending `file:line: statement`.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.parsing import parse_source

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "hardserve"


@dataclasses.dataclass(frozen=True)
class Import:
    path: str  # relative to src/, e.g. hardserve/http/parser.py
    line: int
    module: str  # the dotted name imported
    statement: str  # the source, for the failure message

    def __str__(self) -> str:
        return f"src/{self.path}:{self.line}: {self.statement}  (imports {self.module})"


def module_of(path: str) -> str:
    """hardserve/http/parser.py -> hardserve.http.parser; a package's __init__ -> the package."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, path: str) -> str:
    if node.level == 0:
        return node.module or ""
    package = module_of(path).split(".")
    if not path.endswith("__init__.py"):
        package.pop()  # a module's relative imports start from its package
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _literal_import_call(node: ast.Call) -> str | None:
    """The name in importlib.import_module("x") or __import__("x"), when it is a literal."""
    func = node.func
    is_import = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr in ("import_module", "__import__")
    )
    if is_import and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def imports_in(source: str, path: str) -> Iterator[Import]:
    tree = parse_source(source, path)
    for node in ast.walk(tree):  # every node: function bodies and TYPE_CHECKING blocks too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, path)
            for alias in node.names:
                # X.Y is inside X, so a rule about X or about the submodule X.Y both see it.
                module = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(path, node.lineno, module, ast.unparse(node))
        elif isinstance(node, ast.Call) and (name := _literal_import_call(node)):
            yield Import(path, node.lineno, name, ast.unparse(node))


def under(module: str, *prefixes: str) -> bool:
    """module is one of prefixes or inside one of them (dotted-name prefix, not text)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# -- the rules ----------------------------------------------------------------------------------

# What the sans-IO core may never touch: I/O, concurrency, clocks, processes, logging,
# configuration from the environment (os), and the libraries other layers own.
HTTP_DENIED = (
    "asyncio",
    "socket",
    "socketserver",
    "ssl",
    "threading",
    "_thread",
    "concurrent",
    "multiprocessing",
    "subprocess",
    "signal",
    "select",
    "selectors",
    "time",
    "logging",
    "os",
    "http.client",
    "http.server",
    "urllib.request",
    "prometheus_client",
    "click",
    "uvloop",
)


def _http_forbidden(module: str) -> bool:
    if under(module, *HTTP_DENIED):
        return True
    top = module.partition(".")[0]
    if top == "hardserve":
        return not under(module, "hardserve.http")
    # Anything else must be the standard library or h11: no other third-party package.
    return top not in sys.stdlib_module_names and top != "h11"


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    text: str
    applies: Callable[[str], bool]  # to a file, given its module name
    forbidden: Callable[[str], bool]  # an imported module name


def _only(owner: str, *modules: str) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    return (lambda file: file != owner), (lambda module: under(module, *modules))


RULES = [
    Rule(
        "http-is-sans-io",
        "http/ imports only pure standard-library modules, h11 and http/ itself",
        lambda file: under(file, "hardserve.http"),
        _http_forbidden,
    ),
    Rule(
        "worker-never-imports-master",
        "worker/ never imports master/",
        lambda file: under(file, "hardserve.worker"),
        lambda module: under(module, "hardserve.master"),
    ),
    Rule(
        "master-never-imports-http-or-a-connection",
        "master/ never imports http/ or worker/connection.py",
        lambda file: under(file, "hardserve.master"),
        lambda module: under(module, "hardserve.http", "hardserve.worker.connection"),
    ),
    Rule(
        "only-metrics-imports-prometheus",
        "only observe/metrics.py imports prometheus_client",
        *_only("hardserve.observe.metrics", "prometheus_client"),
    ),
    Rule("only-cli-imports-click", "only cli.py imports click", *_only("hardserve.cli", "click")),
    Rule(
        "only-worker-main-imports-uvloop",
        "only worker/main.py imports uvloop",
        *_only("hardserve.worker.main", "uvloop"),
    ),
    Rule("only-tls-imports-ssl", "only tls.py imports ssl", *_only("hardserve.tls", "ssl")),
    Rule(
        # Settings flow down from the command; nothing below it may reach back up.
        "only-main-imports-cli",
        "only __main__.py imports cli.py",
        *_only("hardserve.__main__", "hardserve.cli"),
    ),
]


def violations(rule: Rule, sources: dict[str, str]) -> list[Import]:
    """The imports in `sources` ({path under src/: text}) that break `rule`."""
    return [
        found
        for path, source in sorted(sources.items())
        if rule.applies(module_of(path))
        for found in imports_in(source, path)
        if rule.forbidden(found.module)
    ]


def package_sources() -> dict[str, str]:
    return {
        path.relative_to(SRC).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


# -- the tests ----------------------------------------------------------------------------------


def test_the_walk_sees_the_package() -> None:
    # Guards against every rule passing because no file was read.
    sources = package_sources()
    for expected in ("hardserve/http/parser.py", "hardserve/worker/main.py", "hardserve/cli.py"):
        assert expected in sources
    found = {i.module for path, text in sources.items() for i in imports_in(text, path)}
    assert {"h11", "click", "uvloop", "hardserve.http.limits.Limits"} <= found


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.id)
def test_import_rule(rule: Rule) -> None:
    broken = violations(rule, package_sources())
    assert not broken, f"{rule.text}; broken by:\n" + "\n".join(map(str, broken))


# The checker itself: a synthetic file breaking each rule, in the ways an import can hide.
SYNTHETIC = {
    "http-is-sans-io": (
        "hardserve/http/fake.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import socket\n",
        (3, "socket"),
    ),
    "worker-never-imports-master": (
        "hardserve/worker/fake.py",
        "def later():\n"
        "    from ..master import listeners\n",
        (2, "hardserve.master.listeners"),
    ),
    "master-never-imports-http-or-a-connection": (
        "hardserve/master/fake.py",
        "from hardserve.worker import connection\n",
        (1, "hardserve.worker.connection"),
    ),
    "only-metrics-imports-prometheus": (
        "hardserve/observe/logs.py",
        "import importlib\n"
        "client = importlib.import_module('prometheus_client')\n",
        (2, "prometheus_client"),
    ),
    "only-cli-imports-click": (
        "hardserve/settings.py",
        "import click.types as t\n",
        (1, "click.types"),
    ),
    "only-worker-main-imports-uvloop": (
        "hardserve/worker/server.py",
        "class Loop:\n"
        "    def make(self):\n"
        "        import uvloop\n",
        (3, "uvloop"),
    ),
    "only-tls-imports-ssl": (
        "hardserve/master/listeners.py",
        "from ssl import SSLContext\n",
        (1, "ssl.SSLContext"),
    ),
    "only-main-imports-cli": (
        "hardserve/worker/main.py",
        "from .. import cli\n",
        (1, "hardserve.cli"),
    ),
}


def test_every_rule_has_a_synthetic_breach() -> None:
    assert set(SYNTHETIC) == {rule.id for rule in RULES}


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.id)
def test_checker_reports_a_breach(rule: Rule) -> None:
    path, source, (line, module) = SYNTHETIC[rule.id]
    broken = violations(rule, {path: source})
    assert [(b.path, b.line, b.module) for b in broken] == [(path, line, module)]
    # The message a developer reads names the file, the line and the statement.
    assert str(broken[0]).startswith(f"src/{path}:{line}: ")


@pytest.mark.parametrize(
    ("path", "source"),
    [
        # The owner of a library may import it; http/ may use h11, pure stdlib and itself.
        ("hardserve/cli.py", "import click\n"),
        ("hardserve/worker/main.py", "import uvloop\n"),
        ("hardserve/tls.py", "import ssl\n"),
        ("hardserve/observe/metrics.py", "from prometheus_client import Counter\n"),
        ("hardserve/__main__.py", "from hardserve.cli import main\n"),
        ("hardserve/http/fake.py", "import h11\nimport re\nfrom . import limits\n"),
        ("hardserve/http/__init__.py", "from .parser import RequestHead\n"),
        ("hardserve/master/fake.py", "from hardserve.worker.main import run_worker\n"),
    ],
)
def test_checker_allows_what_the_rules_allow(path: str, source: str) -> None:
    assert [str(b) for rule in RULES for b in violations(rule, {path: source})] == []


@pytest.mark.parametrize(
    ("module", "denied"),
    [
        ("asyncio.events", True),
        ("os.path", True),
        ("http.client", True),
        ("time", True),
        ("hardserve.settings", True),
        ("hardserve", True),
        ("requests", True),  # third party, not h11
        ("h11", False),
        ("h11._util", False),
        ("http", False),
        ("urllib.parse", False),
        ("dataclasses", False),
        ("hardserve.http.limits", False),
        ("hardserve.httpx", True),  # a dotted-name prefix, not a text prefix
    ],
)
def test_http_allow_and_deny_list(module: str, denied: bool) -> None:
    assert _http_forbidden(module) is denied


@pytest.mark.parametrize(
    ("path", "source", "module"),
    [
        ("hardserve/http/parser.py", "from . import reasons\n", "hardserve.http.reasons"),
        ("hardserve/http/__init__.py", "from . import reasons\n", "hardserve.http.reasons"),
        ("hardserve/http/parser.py", "from .. import settings\n", "hardserve.settings"),
        ("hardserve/worker/call.py", "from ..http import response\n", "hardserve.http.response"),
        ("hardserve/cli.py", "from . import __version__\n", "hardserve.__version__"),
    ],
)
def test_relative_imports_are_resolved(path: str, source: str, module: str) -> None:
    assert module in {found.module for found in imports_in(source, path)}
