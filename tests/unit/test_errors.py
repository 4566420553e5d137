"""tandem.errors draws its hierarchy in its docstring; the drawing is the classes' tree."""

from __future__ import annotations

import inspect
import re
from typing import Any

import tandem.errors as errors
from tandem.errors import TandemError, field_problems


def drawn_tree(docstring: str) -> dict[str, str | None]:
    """class → its parent, as the docstring's tree draws it."""
    drawing = docstring.split("```")[1]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in drawing.strip().splitlines():
        match = re.match(r"^((?:[│ ]   )*)(?:[├└]── )?(\w+)", line)
        assert match is not None, line
        depth = len(match.group(1)) // 4 + (1 if "── " in line else 0)
        name = match.group(2)
        del stack[depth:]
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def test_the_drawing_is_the_class_tree() -> None:
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TandemError)
    }
    actual = {
        name: None if cls is TandemError else cls.__bases__[0].__name__
        for name, cls in classes.items()
    }

    assert drawn_tree(errors.__doc__ or "") == actual


def test_every_error_has_one_base() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, TandemError) and cls is not TandemError:
            assert len(cls.__bases__) == 1, cls


def test_a_drawing_is_read_by_its_indentation() -> None:
    doc = "x\n```\nA\n├── B\n│   └── C\n└── D\n```\n"

    assert drawn_tree(doc) == {"A": None, "B": "A", "C": "B", "D": "A"}


def test_validation_problems_name_each_field_by_its_path() -> None:
    problems: list[dict[str, Any]] = [
        {"loc": ("plugins", 2, "parameters", "weight"), "msg": "must be ≥ 0"},
        {"loc": (), "msg": "give endpoints or kubernetes"},
    ]

    assert field_problems(problems) == (
        "plugins[2].parameters.weight: must be ≥ 0; give endpoints or kubernetes"
    )
    assert field_problems(problems[:1], "scheduler.") == (
        "scheduler.plugins[2].parameters.weight: must be ≥ 0"
    )
