"""The package's layers, read from the source: every import (also those inside functions) points down or
sideways, never up; module-level imports form no cycle; the core never imports Dagster; configs never
imports data or models. A new module must be placed in LAYERS, so where it sits is a decision."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "a2b_pipeline"

# Lowest first. A module belongs to the layer of the longest pattern that matches its dotted name (without
# the package prefix); it may import from its own layer and any lower one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("files", "security", "plugins")),
    ("config", ("configs",)),
    ("checkpoint files", ("checkpoint.directory", "checkpoint.lock")),
    # the seed's TrainState reads and writes itself (from_checkpoint / to_checkpoint): store is its disk half
    ("schema", ("state", "checkpoint.store", "checkpoint.legacy")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("training parts", ("training",)),
    ("checkpointer", ("checkpoint",)),
    ("loop", ("train",)),
    ("runs", ("runs",)),
    ("evaluation", ("evaluation",)),
    ("experiments", ("experiments",)),
    ("dagster", ("defs", "launch")),  # launch: the training step as a Slurm job, reporting through Pipes
    ("entry points", ("cli", "launch.job")),  # launch.job: the job's side runs `a2b train` in process
]


MAX_FUNCTION_LINES = 80

# The upward imports there are, each with its reason: a function-level import, never at module level.
ALLOWED_UPWARD = {
    (
        "state",
        "runs",
    ): "TrainState.from_config names the run directory as every launch does (runs.cli_run_dir)",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    matches = [
        (len(p), rank)
        for rank, (_, patterns) in enumerate(LAYERS)
        for p in patterns
        if name == p or name.startswith(p + ".")
    ]
    assert matches, f"a2b_pipeline.{name} is in no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The a2b_pipeline modules (or packages) `path` imports, without the prefix."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "a2b_pipeline":
            base = node.module.removeprefix("a2b_pipeline").lstrip(".")
            for alias in node.names:  # `from a2b_pipeline.data import corpora`: the submodule if it is one
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if _is_module(sub) else base)
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("a2b_pipeline.") for a in node.names if a.name.startswith("a2b_pipeline.")
            }
    return {f for f in found if f}


def _is_module(name: str) -> bool:
    p = PKG.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, path in MODULES.items()
        if name
        for dep in sorted(imports(path))
        if layer_of(dep) > layer_of(name) and (name, dep) not in ALLOWED_UPWARD
    ]
    assert not upward, "\n".join(upward)


def test_module_level_imports_form_no_cycle() -> None:
    graph = {
        name: {d for d in imports(p, top_level_only=True) if d in MODULES} for name, p in MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", [n for n in MODULES if n and layer_of(n) < layer_of("defs")])
def test_the_core_never_imports_dagster(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not roots & {"dagster", "dagster_pipes"}, name


def test_configs_never_imports_data_or_models() -> None:
    assert not {d for d in imports(MODULES["configs"]) if d.split(".")[0] in {"data", "models"}}


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "configs.py"
    bad.write_text("def f():\n    from a2b_pipeline.data import corpora\n")
    assert any(layer_of(d) > layer_of("configs") for d in imports(bad))


@pytest.mark.parametrize("name", [n for n in MODULES if n and layer_of(n) < layer_of("defs")])
def test_a_long_function_in_the_core_says_why(name: str) -> None:
    """Over 80 lines a function reads as a list, unless it is one piece on purpose, as its docstring says."""
    tree = ast.parse(MODULES[name].read_text())
    unexplained = [
        f"{name}.{f.name}: {f.end_lineno - f.lineno + 1} lines"
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
        and "on purpose" not in (ast.get_docstring(f) or "")
    ]
    assert not unexplained, unexplained
