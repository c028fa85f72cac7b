"""The layers import downwards only: ``ucrn`` knows nothing of Ray or the tuning layer,
the tuning layer nothing of the command line, and ``ucrn``'s modules form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_model_library_imports_nothing_of_ray_or_the_layers_above():
    for path in (ROOT / "ucrn").rglob("*.py"):
        above = {m for m in _imports(path)
                 if m.split(".")[0] in ("ray", "optuna", "tuning", "cluster")}
        assert not above, f"{path.relative_to(ROOT)} imports {sorted(above)}"


def test_the_tuning_layer_imports_nothing_of_the_command_line():
    for path in (ROOT / "tuning").rglob("*.py"):
        assert "ucrn.cli" not in _imports(path), path.relative_to(ROOT)


def test_the_model_librarys_modules_import_one_another_without_a_cycle():
    graph = {_module(path): {m for m in _imports(path) if m.startswith("ucrn")}
             for path in (ROOT / "ucrn").rglob("*.py")}
    graph = {module: {m for m in imported if m in graph and m != module}
             for module, imported in graph.items()}
    graph["ucrn"] = set()  # the package's __init__ holds constants only

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " → ".join((*path, module))
        for imported in graph[module]:
            visit(imported, (*path, module))

    for module in graph:
        visit(module, ())


def test_the_configs_task_names_are_the_tasks():
    from ucrn.config import TASK_NAMES
    from ucrn.tasks import TASKS

    assert tuple(TASKS) == TASK_NAMES
