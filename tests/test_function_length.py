"""No function over 60 lines in maskdata/, training/, export/, serving/: a reader holds each one at once.

A function's length is its ``def`` line through its last line (docstring, comments and blank lines
included, decorators not), as ``ast`` reports them; a nested function counts inside its parent and on
its own. Argparse builders are exempt, since a list of options reads as a table however long it is. A
function is recognised as one when both hold:

- its name is ``build_parser``, ends in ``_parser`` or has the form ``add_*_args``, and
- at least half of its statements (counted with ``ast.walk``, nested ones included) are option
  statements: a call, or an assignment of a call, to something named ``add*`` (``add_argument``,
  ``add_argument_group``, ``add_mutually_exclusive_group`` or the builder's own ``add`` helper), and at
  least five of them call ``add_argument``, so a long function cannot hide behind the name alone.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("maskdata", "training", "export", "serving")
MAX_LINES = 60
_BUILDER_NAME = re.compile(r"^(build_parser|.*_parser|add_.*_args)$")


def _callee(stmt: ast.stmt) -> str:
    """The name called by an expression or assignment statement (``p.add_argument(...)`` → add_argument)."""
    call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    if not isinstance(call, ast.Call):
        return ""
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def is_argparse_builder(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    if not _BUILDER_NAME.match(fn.name):
        return False
    callees = [_callee(n) for n in ast.walk(fn) if isinstance(n, ast.stmt) and n is not fn]
    options = sum(c.startswith("add") for c in callees)
    return callees.count("add_argument") >= 5 and options * 2 >= len(callees)


def long_functions(path: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function in ``path`` longer than ``limit``, builders aside."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.lineno + 1
                if lines > limit and not is_argparse_builder(child):
                    found.append((f"{prefix}{child.name}", lines))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_over_60_lines(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert len(files) >= 3, f"only {len(files)} files under {package}/"
    offenders = [f"{p.relative_to(REPO)}:{name} ({n} lines)" for p in files for name, n in long_functions(p)]
    assert offenders == [], f"functions over {MAX_LINES} lines in {package}/ (split into named steps): {offenders}"


def test_the_length_check_sees_long_functions_and_spares_only_real_builders(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    adds = "".join(f"    p.add_argument('--o{i}')\n" for i in range(70))
    src = tmp_path / "m.py"
    src.write_text(f"def long():\n{body}\n"
                   f"class C:\n    async def method(self):\n{body.replace('    ', '        ')}\n"
                   f"def build_parser():\n    p = object()\n{adds}    return p\n\n"
                   f"def build_parser_in_name_only():\n{body}\n"
                   f"def _parser():\n{body}\n"
                   f"def short():\n    return 1\n")
    found = dict(long_functions(src))
    assert set(found) == {"long", "C.method", "build_parser_in_name_only", "_parser"}, found
    assert found["long"] == 71, f"def line + 70 body lines, got {found['long']}"
