"""House rules of the code tree that no linter checks (issue 11): functions small enough to change safely,
one place for the process-group set-up and the NCCL environment default.

Function length, the rule: the number of source lines from a function's first statement after its
docstring to its last line, blank lines and comments included; the signature, decorators and docstring
are not counted (documentation does not make a function harder to change). A nested function counts
inside its enclosing function and on its own. No function or method in ``distsched/`` may exceed
:data:`MAX_LINES`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distsched"
MAX_LINES = 80


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line (0 for a function
    that is only a docstring)."""
    body = fn.body
    doc = body[0]
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        body = body[1:]
    if not body:
        return 0
    assert fn.end_lineno is not None
    return fn.end_lineno - body[0].lineno + 1


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(qualified name, line, body lines)`` of every function in ``source`` longer than ``limit``."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                if (n := body_lines(child)) > limit:
                    found.append((name, child.lineno, n))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_function_in_distsched_is_over_80_lines():
    offenders = [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
                 for path in _modules() for name, line, n in long_functions(path.read_text(encoding="utf-8"))]
    assert not offenders, f"functions over {MAX_LINES} lines (split them):\n" + "\n".join(offenders)


def _fn(name: str, statements: int, docstring_lines: int = 0) -> str:
    doc = ['"""doc'] + ["doc"] * (docstring_lines - 2) + ['"""'] if docstring_lines else []
    return "\n".join([f"def {name}():", *(f"    {line}" for line in doc),
                      *(f"    x{i} = {i}" for i in range(statements))])


def test_the_count_skips_the_docstring_and_finds_methods_and_nested_functions():
    source = "\n\n".join([
        _fn("short", 80, docstring_lines=50),
        _fn("long", 81, docstring_lines=50),
        "class C:\n" + textwrap.indent(_fn("method", 81), "    "),
        _fn("outer", 1) + "\n" + textwrap.indent(_fn("inner", 81), "    ") + "\n    return inner",
    ]) + "\n"
    found = {name: n for name, _, n in long_functions(source)}
    assert found == {"long": 81, "C.method": 81, "outer.inner": 81, "outer": 84}
    assert long_functions('def f():\n    """only a docstring"""\n') == []


def _files_containing(text: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in _modules() if text in p.read_text(encoding="utf-8")]


def test_process_group_set_up_and_nccl_default_live_in_sync_backend_only():
    # every launcher (torchrun, local processes, Ray Train) joins through distsched.sync.init_process_group
    assert _files_containing("dist.init_process_group(") == ["distsched/sync/backend.py"]
    # the NCCL environment default is set in one place (launch/nccl.env is the shell launchers' own copy)
    assert _files_containing("TORCH_NCCL_ASYNC_ERROR_HANDLING") == ["distsched/sync/backend.py"]
    assert _files_containing("NCCL_ENV_DEFAULTS") == ["distsched/sync/backend.py"]


def _readme_table() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| part ")]


def _named_paths(cell: str) -> list[str]:
    """``distsched/...`` paths of a table cell: ``distsched/x/`` (`a.py`, `b/`) names x/a.py and x/b/;
    ``{a,b}.py`` names a.py and b.py."""
    paths: list[str] = []
    for m in re.finditer(r"`(distsched/[^`]*)`(\s*\(([^)]*)\))?", cell):
        base, inner = m.group(1), m.group(3)
        braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", base)
        paths += [braces.group(1) + part + braces.group(3) for part in braces.group(2).split(",")] if braces else [base]
        if inner:
            paths += [base + name for name in re.findall(r"`([^`]+)`", inner)]
    return paths


def test_readme_where_things_live_names_every_package_and_only_what_exists():
    rows = _readme_table()
    named = [path for row in rows for path in _named_paths(row.split(" | ")[-1])]
    missing = [path for path in named if not (ROOT / path.split(":")[0]).exists()]
    assert not missing, f"README 'Where things live' names what does not exist: {missing}"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    listed = {path.split("/")[1] for path in named}
    assert [p for p in packages if p not in listed] == [], "packages of distsched/ missing from the README table"
    assert {"cli.py", "config.py", "_checks.py"} <= listed
