"""The package's shape: imports point down (no cycle, lazy imports included), and sizes.

The limits: no module over 400 lines, no function over 60 (argparse builders aside). A
module or function allowed over them is listed with its size and may not grow; the lists are
empty.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llcgrok"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
# Allowed over the limits, with their line counts (none today).
OVERSIZE_MODULES = {}
OVERSIZE_FUNCTIONS = {}


# The layers of docs/architecture.md, lowest first: a module imports from its own layer or below.
LAYERS = [
    ("base", ["config", "config_sections", "config_validation", "seeding", "filelock", "device", "rule", "known_lambda", "metrics", "_devinterp"]),
    ("tasks and models", ["tasks", "seqtasks", "model", "tiny", "toy_models", "models", "taskspec"]),
    ("estimator", ["sgld_batched", "chains", "diagnostics", "loss_data", "llc", "curvature", "calibrate"]),
    ("run directory and training", ["checkpoints", "runs", "seqconfig", "fingerprints", "loop", "train", "ensemble", "ensemble_model", "seqtrain", "rundata"]),
    ("figures", ["plots", "plots._common", "plots.calibration", "plots.capacity", "plots.fingerprints", "plots.ladder",
                 "plots.studies", "plots.trajectories", "plots.sequence", "seqplots"]),
    ("run level", ["trajectory", "sequence_llc", "seqparams"]),
    ("studies", ["capacity", "study", "seqstudy", "report", "seqreport", "sweep", "sweep_execute", "sweep_backends", "fingerprint_study", "dmd"]),
    ("faces", ["notebook", "cli"]),
]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            candidates = [n for n in names if n.startswith("llcgrok")]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_among_the_package_modules():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    graph = {k: {v for v in vs if not (k == "llcgrok" or v == "llcgrok")} for k, vs in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_imports_point_down_the_layers():
    modules = _modules()
    layer_of = {f"llcgrok.{name}": i for i, (_, names) in enumerate(LAYERS) for name in names}
    unplaced = sorted(set(modules) - set(layer_of) - {"llcgrok"})
    assert not unplaced, f"place these modules in a layer (here and in docs/architecture.md): {unplaced}"
    upward = [f"{name} ({LAYERS[layer_of[name]][0]}) imports {target} ({LAYERS[layer_of[target]][0]})"
              for name, path in modules.items() if name != "llcgrok"
              for target in _imports(name, path, set(modules)) if target != "llcgrok" and layer_of[target] > layer_of[name]]
    assert not upward, upward


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _function_sizes(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text())
    return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("build_parser")}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_module_and_function_sizes_stay_within_the_limits(path):
    key = str(path.relative_to(PACKAGE))
    lines = len(path.read_text().splitlines())
    assert lines <= OVERSIZE_MODULES.get(key, MAX_MODULE_LINES), f"{key}: {lines} lines"
    for function, size in _function_sizes(path).items():
        limit = OVERSIZE_FUNCTIONS.get(f"{key}:{function}", MAX_FUNCTION_LINES)
        assert size <= limit, f"{key}:{function} is {size} lines (limit {limit})"
