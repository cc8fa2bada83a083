"""The layering, read from the imports: README's "Layout" table says what each package may import."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from birdsdao.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "birdsdao"
RUNTIME = ("web", "vision", "species", "kb", "llm")
MODEL = ("vision", "species", "kb", "llm")
FLASK = ("flask", "werkzeug")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node, package: str) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    module = ".".join(base + ([node.module] if node.module else []))
    return {module} | {f"{module}.{alias.name}" for alias in node.names}


def _imports(path: Path, at_import_time: bool = False) -> set[str]:
    """Every module (and ``module.name``) that ``path`` imports, relative ones resolved; with ``at_import_time``
    only those that importing it runs (not inside functions, not under ``if TYPE_CHECKING``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found, todo = set(), list(ast.parse(path.read_text(encoding="utf-8")).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _imported(node, package)
        elif at_import_time and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif at_import_time and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        else:
            todo += list(ast.iter_child_nodes(node))
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}
AT_IMPORT = {name: _imports(path, at_import_time=True) for name, path in MODULES.items()}


def _package_of(module: str) -> str:
    """``birdsdao.kb.store`` → ``kb``; a top-level module (``birdsdao.config``) → its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "birdsdao"


def _layout() -> dict[str, set[str]]:
    """README's Layout rows for the runtime packages: package → the ``birdsdao`` names it may import."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    allowed = {}
    for row in re.findall(r"^\| `(\w+)/` \|[^|]*\|([^|]*)\|$", table, re.M):
        allowed[row[0]] = set(re.findall(r"`(\w+)`", row[1]))
    return allowed


def _project_imports(module: str, table: dict = IMPORTS) -> set[str]:
    """Project modules ``module`` imports (the package face ``birdsdao`` itself aside: ``from .. import segment``)."""
    return {name for name in table[module] if name.split(".")[0] == "birdsdao" and name != "birdsdao"}


def _reaches(module: str) -> set[str]:
    """Project modules that importing ``module`` runs: its imports, their packages' ``__init__``, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [name for name in _project_imports(current, AT_IMPORT) if name in MODULES]
    return seen


def test_readme_layout_lists_every_runtime_package():
    assert set(_layout()) >= set(RUNTIME), "README's Layout table must have a row per runtime package"


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_package_imports_only_what_the_readme_layout_allows(package):
    allowed = _layout()[package] | {package}
    wrong = sorted(f"{module} imports {name}" for module in MODULES if _package_of(module) == package
                   for name in _project_imports(module)
                   if name in MODULES and _package_of(name) not in allowed)
    assert not wrong, f"birdsdao/{package}/ may import only {sorted(allowed)} (README Layout): {wrong}"


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_package_never_imports_training_tools_bench_or_the_app_factory(package):
    banned = ("birdsdao.train", "birdsdao.tools", "bench", "birdsdao.create_app")
    wrong = sorted(f"{module} imports {name}" for module in MODULES if _package_of(module) == package
                   for name in IMPORTS[module] if any(name == b or name.startswith(b + ".") for b in banned))
    assert not wrong, wrong


@pytest.mark.parametrize("package", MODEL)
def test_model_package_never_reaches_flask_directly_or_through_another_module(package):
    own = [module for module in MODULES if _package_of(module) == package]
    direct = {f"{module} imports {name}" for module in own for name in IMPORTS[module] if name.split(".")[0] in FLASK}
    through = {f"{module} (reached from {start}) imports {name}" for start in own for module in _reaches(start)
               for name in AT_IMPORT[module] if name.split(".")[0] in FLASK}
    wrong = sorted(direct | through)
    assert not wrong, wrong


def test_importing_every_model_package_loads_no_flask_and_no_training_code():
    code = ("import sys, birdsdao.vision.pipeline, birdsdao.species, birdsdao.kb, birdsdao.llm.answer;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug'}),"
            " sorted(m for m in sys.modules if m.startswith(('birdsdao.train', 'birdsdao.tools', 'birdsdao.web'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "[]"], out.stdout
