"""The package's shape: imports between medisyn's modules are at module level and have no cycle; functions are
short; `medisyn --help` does not import the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medisyn_cli"
HEAVY = ("torch", "diffusers", "transformers", "faiss", "open_clip", "torchvision", "accelerate", "peft")
MAX_LINES = 50


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _own_imports(tree: ast.Module, modules: set[str], package: str = ""):
    """(node, target module) for every `from medisyn_cli... import` / `import medisyn_cli...` in the tree, and
    every entry of a package's lazy `_API = {name: (module, attribute)}` table (core/lazy.py: imported on first
    use, so `import medisyn_cli` stays light; read here as the module-level imports they stand for)."""
    yield from _lazy_imports(tree, package)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medisyn_cli"):
            assert node.level == 0
            for alias in node.names:  # `from medisyn_cli.x import y` where y is a module imports that module
                sub = f"{node.module}.{alias.name}"
                yield node, sub if sub in modules else node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("medisyn_cli"):
                    yield node, alias.name


def _lazy_imports(tree: ast.Module, package: str):
    """(the `_API = {...}` assignment, package.module) for each entry of a module-level lazy table."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_API"]:
            for entry in ast.literal_eval(node.value).values():
                yield node, f"{package}.{entry[0]}"


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    return {
        name: {target for _, target in _own_imports(tree, set(trees), name) if target != name}
        for name, tree in trees.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


# The folder layers (ARCHITECTURE.md): each folder may import only the folders listed for it (and itself).
LOWER = {
    "core": set(),
    "pipeline": {"core"},
    "dataset": {"core", "pipeline"},
    "screening": {"core", "pipeline", "dataset"},
    "judge": {"core", "pipeline", "dataset", "screening"},
}
STAGE = {"core", "pipeline", "dataset", "screening", "judge"}  # generate, train, evaluate, study: siblings
ALLOWED = {
    **LOWER,
    **{stage: STAGE for stage in ("generate", "train", "evaluate", "study")},
    "cli": STAGE | {"generate", "train", "evaluate", "study"},
}
ALLOWED["medisyn_cli"] = set(ALLOWED) | {"bundled"}  # the package's __init__ and __main__ (the Python API)


def _folder(module: str) -> str:
    """medisyn_cli.core.files -> core; medisyn_cli and medisyn_cli.__main__ -> medisyn_cli."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "medisyn_cli"


def _layer_violations(trees: dict[str, ast.Module], allowed: dict[str, set[str]]) -> list[str]:
    """'file:line: folder imports target' for every import of a folder that `allowed` does not list."""
    found = []
    for name, tree in sorted(trees.items()):
        source = _folder(name)
        for node, target in _own_imports(tree, set(trees), name):
            folder = _folder(target)
            if folder != source and folder not in allowed.get(source, set()):
                path = name.replace(".", "/") + ".py"
                found.append(f"{path}:{node.lineno}: {source} imports {folder} ({target})")
    return sorted(set(found))


def test_folders_import_only_the_layers_below_them():
    trees = _modules()
    folders = {_folder(name) for name in trees}
    assert folders <= set(ALLOWED), f"folders with no row in ALLOWED: {sorted(folders - set(ALLOWED))}"
    violations = _layer_violations(trees, ALLOWED)
    assert not violations, "imports against the layers of ARCHITECTURE.md:\n" + "\n".join(violations)


def test_layer_check_names_the_offending_file_and_line():
    trees = {
        "medisyn_cli.screening.audit": ast.parse("import os\nfrom medisyn_cli.generate.card import x\n"),
        "medisyn_cli.generate.card": ast.parse("from medisyn_cli.core.files import y\n"),
        "medisyn_cli.core.files": ast.parse(""),
    }
    assert _layer_violations(trees, ALLOWED) == [
        "medisyn_cli/screening/audit.py:2: screening imports generate (medisyn_cli.generate.card)"
    ]


def test_layers_form_a_dag_and_stages_are_siblings():
    assert _cycle({folder: targets for folder, targets in ALLOWED.items()}) is None
    stages = ("generate", "train", "evaluate", "study")
    assert all(not ALLOWED[a] & set(stages) for a in stages)


def test_no_import_cycle_between_medisyn_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Modules that import medisyn inside a function on purpose, and why.
DEFERRED = {"medisyn_cli.cli.entry": "installs the stop-signal handlers before the CLI's imports run"}


def test_medisyn_modules_are_imported_at_module_level():
    trees = _modules()
    lazy = [
        f"{name}:{node.lineno}"
        for name, tree in trees.items()
        for node, _ in _own_imports(tree, set(trees), name)
        if node not in tree.body and name not in DEFERRED
    ]
    assert not lazy, f"imports of medisyn modules inside functions: {lazy}"


def _body_lines(node: ast.FunctionDef) -> int:
    """Logical lines of a function's body after its signature and docstring: the lines on which a statement
    starts, so a call `ruff format` spreads over several lines counts once (a Typer command's signature is its
    table of options, read like data)."""
    body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
    return len(
        {child.lineno for statement in body for child in ast.walk(statement) if isinstance(child, ast.stmt)}
    )


def test_no_function_body_over_fifty_lines():
    long = [
        f"{name}.{node.name} ({_body_lines(node)} lines)"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_LINES
    ]
    assert not long, long


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from typer.testing import CliRunner; from medisyn_cli.cli.main import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
