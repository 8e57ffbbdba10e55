"""Fail when code that QGIS's own Python may run needs a newer Python than 3.9.

QGIS 3.22-3.34 ship Python 3.9 (Windows, OSGeo4W) or 3.10 (Ubuntu 22.04). Everything QGIS's Python may run — the
plugin, the engine modules it loads in-process, and the whole engine, which the training dependency profile runs on
that same Python — must run there. Two checks:

* vermin: library members, syntax and modules newer than the target (``itertools.pairwise``, ``datetime.UTC``,
  ``match``, ...). Annotations are not evaluated (every such file has ``from __future__ import annotations``).
* union types ``X | Y`` evaluated at run time (``isinstance(x, int | float)``, a module-level type alias): vermin's
  own union detection also flags postponed annotations, so this AST walk looks only where the union is evaluated.

Usage: ``python scripts/check_python_version.py [FILES...]`` (default: pmtl_qgis/ and engine/ of this checkout).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = "3.9"
QGIS_SIDE = ("pmtl_qgis", "engine")
"""Everything QGIS may run: the plugin, and the whole engine (the training dependency profile installs torch into
QGIS's own Python and runs ``engine.train`` on it)."""

TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "frozenset", "type", "object"}


def qgis_side_files(root: Path = REPO) -> list[Path]:
    """Every .py file under the QGIS_SIDE entries."""
    files: list[Path] = []
    for entry in QGIS_SIDE:
        path = root / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _looks_like_type(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_type(node.left) or _looks_like_type(node.right)
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return _looks_like_type(node.value)
    return False


def _is_union(node: ast.expr) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def runtime_unions(path: Path) -> list[str]:
    """``X | Y`` types evaluated at run time: in isinstance/issubclass, or a module-level alias of builtin types."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and _is_union(node.args[1])
        ):
            problems.append(f"{path}:{node.lineno}: {node.func.id}() with `X | Y` needs Python 3.10: use a tuple")
    for node in tree.body:
        if isinstance(node, ast.Assign) and _is_union(node.value) and _looks_like_type(node.value):
            problems.append(f"{path}:{node.lineno}: type alias with `X | Y` needs Python 3.10: use Optional/Union")
    if not _postpones_annotations(tree):
        for annotation in _annotations(tree):
            if any(_is_union(part) for part in ast.walk(annotation)):
                problems.append(
                    f"{path}:{annotation.lineno}: `X | Y` annotation needs `from __future__ import annotations`"
                )
    return problems


def _postpones_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )


def _annotations(tree: ast.Module) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            found += [a.annotation for a in arguments if a.annotation is not None]
            if node.returns is not None:
                found.append(node.returns)
    return found


def run_vermin(files: list[Path]) -> tuple[int, str]:
    """vermin's exit code and its violations (an empty string when the target is met)."""
    vermin = "import sys, vermin; sys.exit(vermin.main())"  # the package has no __main__
    command = [sys.executable, "-c", vermin, f"--target={TARGET}-", "--no-tips", "--violations", "--quiet"]
    command += ["--no-parse-comments", "--no-eval-annotations", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to check (default: the QGIS-side files)")
    files = parser.parse_args(argv).files or qgis_side_files()
    code, report = run_vermin(files)
    problems = [line for path in files for line in runtime_unions(path)]
    if code != 0:
        print(report or f"vermin failed with exit code {code}")
    for line in problems:
        print(line)
    if code != 0 or problems:
        print(f"Code that runs inside QGIS must run on Python {TARGET}+ (see scripts/check_python_version.py).")
        return 1
    print(f"{len(files)} QGIS-side files run on Python {TARGET}+.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
