"""loader.load_app: 'module:name' and 'module:factory(literal args)' -> the WSGI app.

Each test writes its app modules into its own temporary directory; the fixture puts sys.path,
sys.modules and the working directory back afterwards, because load_app changes all three.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardserve import loader
from hardserve.loader import SPEC_MAX_CHARS, AppLoadError, load_app

APP_MODULE = """
    import os
    from pathlib import Path

    # Importing this module leaves a trace, so a test can tell whether it was imported.
    Path(os.environ["LOADER_TEST_IMPORTED"]).touch()

    def app(environ, start_response):
        return []

    def application(environ, start_response):
        return []

    calls = []

    def make(*args, **kwargs):
        calls.append((args, kwargs))
        return app

    def make_nothing():
        return None

    def make_broken():
        raise LookupError("the factory failed")

    not_callable = 42
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding `appmod` (APP_MODULE). Everything load_app changes is
    restored afterwards."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.setattr(sys, "path", [str(directory), *sys.path])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOADER_TEST_IMPORTED", str(tmp_path / "imported"))
    before = set(sys.modules)
    write(directory, "appmod.py", APP_MODULE)
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, relative: str, source: str) -> None:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    # The import system caches directory listings; a file written during the run may be
    # missed without this.
    importlib.invalidate_caches()


def imported(site: Path) -> bool:
    return (site.parent / "imported").exists()


# -- what loads -------------------------------------------------------------------------------


def test_module_and_name(site: Path) -> None:
    app = load_app("appmod:app")
    assert app is sys.modules["appmod"].app


def test_module_alone_means_application(site: Path) -> None:
    assert load_app("appmod") is sys.modules["appmod"].application


def test_factory_without_arguments(site: Path) -> None:
    assert load_app("appmod:make()") is sys.modules["appmod"].app
    assert sys.modules["appmod"].calls == [((), {})]


def test_factory_with_literal_arguments(site: Path) -> None:
    spec = "appmod:make(1, -2.5, 'three', b'4', (5, [6]), {'seven': {8}}, None, flag=True, x=1j)"
    load_app(spec)
    assert sys.modules["appmod"].calls == [
        ((1, -2.5, "three", b"4", (5, [6]), {"seven": {8}}, None), {"flag": True, "x": 1j})
    ]


def test_spaces_around_the_name_and_call(site: Path) -> None:
    assert load_app("appmod: make( 'a' ) ") is sys.modules["appmod"].app


def test_module_in_a_package(site: Path) -> None:
    write(site, "pkg/__init__.py", "")
    write(site, "pkg/sub/__init__.py", "")
    write(site, "pkg/sub/web.py", "def app(environ, start_response):\n    return []\n")
    assert load_app("pkg.sub.web:app") is sys.modules["pkg.sub.web"].app


# -- specs that are refused before anything is imported ----------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "make(__import__('os').system('touch {pwned}'))",
        "make(open('{pwned}', 'w'))",
        "make(k=__import__('os').system('touch {pwned}'))",
        "make(x)",
        "make(k=x)",
        "make(os.sep)",
        "make(*['a'])",
        "make(**{{'k': 1}})",
        "make([i for i in 'ab'])",
        "make(f'{{1}}')",
        "make(1 + 2)",
        "make(-x)",
        "make(lambda: 1)",
        "make((n := 1))",
        "make()()",
        "make(1)(2)",
        "make({{[1]: 2}})",  # literals, but unhashable: literal_eval raised TypeError
        "make({{[]}})",
        "make(k={{{{}}: 1}})",
        "app.__call__",
        "app[0]",
        "__import__('os').system('touch {pwned}')",
        "lambda: 0",
        "'app'",
        "1",
        "",
        "app app",
        "app; import os",
    ],
)
def test_anything_but_a_name_or_literal_call_is_refused_unimported(
    expression: str, site: Path
) -> None:
    pwned = site.parent / "pwned"
    spec = "appmod:" + expression.format(pwned=pwned)
    with pytest.raises(AppLoadError):
        load_app(spec)
    assert not pwned.exists(), "the spec's code ran"
    assert "appmod" not in sys.modules
    assert not imported(site)


@pytest.mark.parametrize("spec", ["", ":app", "app mod:app", "appmod.:app", "../appmod:app",
                                  "appmod/x:app", "1appmod:app", "appmod\n:app"])
def test_module_that_is_not_a_dotted_name_is_refused(spec: str, site: Path) -> None:
    with pytest.raises(AppLoadError, match="is not MODULE:NAME"):
        load_app(spec)
    assert not imported(site)


@pytest.mark.parametrize(
    "spec", ["appmod\n:app", "app\rmod:app", "appmod:make(\n1)(\n)", "appmod:a\nb", "x\x1b[2J:app"]
)
def test_error_message_is_one_line_whatever_the_spec(spec: str, site: Path) -> None:
    # The CLI prints the message as one line; control characters from the spec are escaped.
    with pytest.raises(AppLoadError) as caught:
        load_app(spec)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and "\x1b" not in message


def test_spec_longer_than_the_cap_is_refused_unread(site: Path) -> None:
    # 100,000 characters of unary minus used to end in MemoryError from the parser.
    spec = "appmod:make(" + "-" * 100_000 + "1)"
    with pytest.raises(AppLoadError) as caught:
        load_app(spec)
    message = str(caught.value)
    assert message == (
        f"the app spec is {len(spec)} characters long; at most {SPEC_MAX_CHARS} are allowed"
    )
    assert not imported(site)


def test_spec_of_exactly_the_cap_loads(site: Path) -> None:
    prefix, suffix = "appmod:make('", "')"
    spec = prefix + "x" * (SPEC_MAX_CHARS - len(prefix) - len(suffix)) + suffix
    assert len(spec) == SPEC_MAX_CHARS
    assert load_app(spec) is sys.modules["appmod"].app
    with pytest.raises(AppLoadError, match="characters long"):
        load_app(spec[:-2] + "x')")


@pytest.mark.parametrize(
    "expression",
    [
        "make(" + "-" * 20_000 + "1)",  # RecursionError while building the tree
        "make(" + "not " * 20_000 + "1)",
        "make(" + "(" * 5_000 + ")" * 5_000 + ")",
        "make(" + "[" * 5_000 + "]" * 5_000 + ")",
    ],
    ids=["minus", "not", "parentheses", "lists"],
)
def test_nesting_too_deep_for_the_parser_is_a_spec_error(
    expression: str, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap keeps such specs out; without it the parser's own failure (MemoryError,
    # RecursionError) must still be an AppLoadError, not a traceback.
    monkeypatch.setattr(loader, "SPEC_MAX_CHARS", 1_000_000)
    with pytest.raises(AppLoadError) as caught:
        load_app("appmod:" + expression)
    assert "\n" not in str(caught.value)
    assert not imported(site)


def ast_with(**replaced: object) -> types.ModuleType:
    """The ast module as the loader sees it, with some functions replaced (the real module,
    which pytest itself uses, stays as it is)."""
    fake = types.ModuleType("ast")
    fake.__dict__.update(vars(ast))
    fake.__dict__.update(replaced)
    return fake


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_parser_running_out_of_memory_or_stack_is_a_spec_error(
    error: type[BaseException], site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(loader, "ast", ast_with(parse=exhausted))
    with pytest.raises(AppLoadError, match="nested too deeply"):
        load_app("appmod:app")
    assert not imported(site)


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_literal_eval_running_out_of_memory_or_stack_is_a_spec_error(
    error: type[BaseException], site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(loader, "ast", ast_with(literal_eval=exhausted))
    with pytest.raises(AppLoadError, match="nested too deeply"):
        load_app("appmod:make(1)")
    assert not imported(site)


# -- specs that name nothing usable -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:app", "no module named 'no_such_module_xyz'"),
        ("no_such_pkg_xyz.web:app", "no module named 'no_such_pkg_xyz'"),
        ("appmod.sub:app", "no module named 'appmod.sub'"),  # appmod is not a package
        ("appmod:missing", "module 'appmod' has no attribute 'missing'"),
        ("appmod:missing()", "module 'appmod' has no attribute 'missing'"),
        ("appmod:not_callable", "'appmod:not_callable' is a int, not a WSGI callable"),
        ("appmod:not_callable()", "appmod:not_callable is not callable"),
        ("appmod:make_nothing()", "is a NoneType, not a WSGI callable"),
    ],
)
def test_spec_naming_nothing_callable(spec: str, message: str, site: Path) -> None:
    with pytest.raises(AppLoadError, match=re.escape(message)):
        load_app(spec)


def test_missing_submodule_of_an_existing_package(site: Path) -> None:
    write(site, "pkg/__init__.py", "")
    with pytest.raises(AppLoadError, match=r"no module named 'pkg\.web'"):
        load_app("pkg.web:app")


# -- errors of the app itself propagate unchanged ------------------------------------------------


def test_missing_dependency_of_the_app_is_not_a_spec_error(site: Path) -> None:
    # The spec is right; the app is broken. Its own traceback is what the user needs.
    write(site, "needsdep.py", "import loader_test_missing_dependency\napp = None\n")
    with pytest.raises(ModuleNotFoundError) as caught:
        load_app("needsdep:app")
    assert not isinstance(caught.value, AppLoadError)
    assert caught.value.name == "loader_test_missing_dependency"


def test_missing_sibling_module_inside_the_apps_package_is_not_a_spec_error(site: Path) -> None:
    # pkg.web exists and imports pkg.helpers, which does not: the name shares the spec's
    # package, but the spec itself is right.
    write(site, "pkg/__init__.py", "")
    write(site, "pkg/web.py", "from pkg import helpers\napp = None\n")
    with pytest.raises(ImportError) as caught:
        load_app("pkg.web:app")
    assert not isinstance(caught.value, AppLoadError)


def test_other_error_while_importing_the_app_propagates(site: Path) -> None:
    write(site, "badconf.py", "raise KeyError('DATABASE_URL')\n")
    with pytest.raises(KeyError, match="DATABASE_URL"):
        load_app("badconf:app")


def test_error_raised_by_the_factory_propagates(site: Path) -> None:
    with pytest.raises(LookupError, match="the factory failed"):
        load_app("appmod:make_broken()")


# -- chdir and pythonpath -----------------------------------------------------------------------


def test_chdir_happens_before_the_import(site: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "onlyhere.py", "import os\ncwd = os.getcwd()\napp = lambda e, s: []\n")
    load_app("onlyhere:app", chdir=str(elsewhere))
    assert os.getcwd() == str(elsewhere)
    assert sys.modules["onlyhere"].cwd == str(elsewhere)


def test_chdir_to_a_missing_directory(site: Path, tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match="cannot change directory to"):
        load_app("appmod:app", chdir=str(tmp_path / "missing"))
    assert not imported(site)


def test_pythonpath_entries_come_first_in_the_order_given(site: Path, tmp_path: Path) -> None:
    for name in ("first", "second"):
        write(tmp_path / name, "shadow.py", f"WHERE = {name!r}\napp = lambda e, s: []\n")
    # The same module name on the existing sys.path must lose to --pythonpath.
    write(site, "shadow.py", "WHERE = 'site'\napp = lambda e, s: []\n")
    load_app("shadow:app", pythonpath=(str(tmp_path / "first"), str(tmp_path / "second")))
    assert sys.modules["shadow"].WHERE == "first"
    positions = [sys.path.index(str(path)) for path in (tmp_path / "first", tmp_path / "second")]
    assert positions[0] < positions[1] < sys.path.index(str(site))


@pytest.fixture
def console_script_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.path as the console script has it: its bin directory first, and neither '' nor the
    working directory (`python -m` puts the working directory there itself)."""
    cwd = os.getcwd()
    rest = [entry for entry in sys.path if entry not in ("", cwd)]
    monkeypatch.setattr(sys, "path", ["/nonexistent/venv/bin", *rest])


def _write_shadows(tmp_path: Path, *names: str) -> None:
    for name in names:
        write(tmp_path / name, "shadowed.py", f"WHERE = {name!r}\napp = lambda e, s: []\n")


@pytest.mark.usefixtures("console_script_path")
def test_pythonpath_comes_before_the_working_directory(site: Path, tmp_path: Path) -> None:
    # The working directory (tmp_path, from the fixture) holds a module of the same name.
    _write_shadows(tmp_path, "lib", "lib2")
    write(tmp_path, "shadowed.py", "WHERE = 'cwd'\napp = lambda e, s: []\n")
    load_app("shadowed:app", pythonpath=(str(tmp_path / "lib"), str(tmp_path / "lib2")))
    assert sys.modules["shadowed"].WHERE == "lib"
    assert sys.path[:3] == [str(tmp_path / "lib"), str(tmp_path / "lib2"), str(tmp_path)]


@pytest.mark.usefixtures("console_script_path")
def test_pythonpath_comes_before_the_chdir_directory(site: Path, tmp_path: Path) -> None:
    _write_shadows(tmp_path, "lib", "app_dir")
    load_app("shadowed:app", chdir=str(tmp_path / "app_dir"), pythonpath=(str(tmp_path / "lib"),))
    assert sys.modules["shadowed"].WHERE == "lib"
    assert sys.path[:2] == [str(tmp_path / "lib"), str(tmp_path / "app_dir")]


@pytest.mark.usefixtures("console_script_path")
def test_working_directory_is_added_once_when_it_is_a_pythonpath_entry(
    site: Path, tmp_path: Path
) -> None:
    load_app("appmod:app", pythonpath=(".",))
    assert sys.path.count(str(tmp_path)) == 1
    assert sys.path[0] == str(tmp_path)


def test_relative_pythonpath_is_made_absolute(site: Path, tmp_path: Path) -> None:
    write(tmp_path / "rel", "relmod.py", "app = lambda e, s: []\n")
    load_app("relmod:app", pythonpath=("rel",))  # the fixture's working directory is tmp_path
    assert str(tmp_path / "rel") in sys.path
    assert "rel" not in sys.path
