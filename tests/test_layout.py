"""The shape of the house, checked: one-way layers (lint-imports, in make test), small modules, thin commands."""

from __future__ import annotations

import ast
from pathlib import Path

import click

from streams.cli import main
from tests.conftest import REPO

LAYERS = ("schemas", "agents", "streams")


def _modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py"))


def test_no_module_is_over_400_lines() -> None:
    big = {str(p.relative_to(REPO)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert big == {}


def _commands(group: click.Group) -> list[click.Command]:
    out: list[click.Command] = []
    for command in group.commands.values():
        out.extend(_commands(command) if isinstance(command, click.Group) else [command])
    return out


def test_every_cli_command_body_is_at_most_30_lines() -> None:
    """A command parses its flags and calls a function that tests can call without the CLI."""
    long = {}
    for command in _commands(main):
        callback = command.callback
        assert callback is not None
        function = getattr(callback, "__wrapped__", callback)
        source = Path(function.__code__.co_filename)
        node = next(n for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef) and n.name == function.__name__)
        body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) else node.body
        lines = (node.end_lineno or 0) - body[0].lineno + 1
        if lines > 30:
            long[command.name] = lines
    assert long == {}


def test_the_layers_are_the_three_top_level_packages() -> None:
    assert all((REPO / layer / "__init__.py").is_file() for layer in LAYERS)
    assert "layers" in (REPO / "pyproject.toml").read_text() and "lint-imports" in (REPO / "Makefile").read_text()
