"""'module:callable' or 'module:factory(args)' -> the WSGI app.

A factory call may only have literal arguments; they are read with ast.literal_eval, never
eval, so an app spec from a config file or an environment variable cannot run code.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from typing import Any

# A dotted module path, a name and a few literal arguments fit with room to spare. Past this
# the spec is refused unread: the parser's time and memory grow with it, and a deeply nested
# expression exhausts the parser's stack (MemoryError) or Python's (RecursionError).
SPEC_MAX_CHARS = 1024


class AppLoadError(Exception):
    """The app spec names nothing callable. The CLI prints the message and exits with status 4."""


def _parse(spec: str) -> tuple[str, str, tuple[Any, ...] | None, dict[str, Any]]:
    if len(spec) > SPEC_MAX_CHARS:
        raise AppLoadError(
            f"the app spec is {len(spec)} characters long; at most {SPEC_MAX_CHARS} are allowed"
        )
    module_name, colon, expression = spec.partition(":")
    if not colon:
        expression = "application"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"{spec!r} is not MODULE:NAME (module {module_name!r} is not a name)")
    try:
        node = ast.parse(expression.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        raise AppLoadError(f"{spec!r}: {expression!r} is not a name or a call") from None
    except (MemoryError, RecursionError):
        raise AppLoadError(f"{spec!r}: {expression!r} is nested too deeply") from None
    if isinstance(node, ast.Name):
        return module_name, node.id, None, {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = tuple(ast.literal_eval(arg) for arg in node.args)
            kwargs = {
                kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None
            }
        except ValueError:
            raise AppLoadError(
                f"{spec!r}: a factory call may only have literal arguments"
            ) from None
        except TypeError as exc:  # an unhashable literal where a key is needed: {[1]: 2}
            raise AppLoadError(f"{spec!r}: a factory argument cannot be built: {exc}") from None
        except (MemoryError, RecursionError):
            raise AppLoadError(f"{spec!r}: a factory argument is nested too deeply") from None
        if any(kw.arg is None for kw in node.keywords):
            raise AppLoadError(f"{spec!r}: **kwargs is not allowed in a factory call")
        return module_name, node.func.id, args, kwargs
    raise AppLoadError(f"{spec!r}: {expression!r} is not a name or a call of a name")


def check_spec(spec: str) -> None:
    """Raise AppLoadError if `spec` is not MODULE:APP or MODULE:factory(literals); imports
    nothing (the master checks the spec before it binds, the workers import the app)."""
    _parse(spec)


def load_app(spec: str, *, chdir: str | None = None, pythonpath: tuple[str, ...] = ()) -> Any:
    module_name, attribute, args, kwargs = _parse(spec)
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(f"cannot change directory to {chdir!r}: {exc.strerror}") from None
    # --pythonpath first, in the order given, then the working directory (after --chdir), so
    # that --pythonpath wins however hardserve was started. `python -m` puts the directory it
    # started in on sys.path itself; the console script puts its own bin directory there.
    front = [os.path.abspath(path) for path in pythonpath]
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path and cwd not in front:
        front.append(cwd)
    sys.path[0:0] = front
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise AppLoadError(f"no module named {exc.name!r} (from {spec!r})") from None
        raise  # the app's own import failed: its traceback is what the user needs
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if args is not None:
        if not callable(target):
            raise AppLoadError(f"{module_name}:{attribute} is not callable, so it cannot be called")
        target = target(*args, **kwargs)
    if not callable(target):
        raise AppLoadError(f"{spec!r} is a {type(target).__name__}, not a WSGI callable")
    return target
