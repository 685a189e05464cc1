"""Classes whose __slots__ keep "__dict__" (so an attribute left off the list still works) must
still list every attribute their methods set: one left off gives each instance a dict of its
own, made when the attribute is first set, and every read of it goes through that dict. Held by
reading the source, since nothing fails at run time."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.parsing import parse_source

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "hardserve"


def _slots(cls: ast.ClassDef) -> set[str] | None:
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return {value} if isinstance(value, str) else set(value)
    return None


def _attributes_set_on_self(cls: ast.ClassDef) -> dict[str, int]:
    """Attribute name -> first line where a method of `cls` assigns `self.<name>`."""
    found: dict[str, int] = {}
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if (
                    isinstance(part, ast.Attribute)
                    and isinstance(part.value, ast.Name)
                    and part.value.id == "self"
                ):
                    found.setdefault(part.attr, part.lineno)
    return found


def _classes_with_dict_slot() -> list[tuple[Path, ast.ClassDef, set[str]]]:
    classes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(parse_source(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                slots = _slots(node)
                if slots is not None and "__dict__" in slots:
                    classes.append((path, node, slots))
    return classes


def test_the_connection_keeps_a_dict_slot_so_this_check_has_work() -> None:
    names = {cls.name for _, cls, _ in _classes_with_dict_slot()}
    assert "HttpConnection" in names


def test_every_attribute_set_on_self_is_listed_in_slots() -> None:
    missing = []
    for path, cls, slots in _classes_with_dict_slot():
        for name, line in sorted(_attributes_set_on_self(cls).items()):
            if name not in slots:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {cls.name}.{name}")
    assert not missing, "set but not in __slots__:\n" + "\n".join(missing)
