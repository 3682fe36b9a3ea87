"""The package's import graph keeps its one-way layers, read from the source (no imports run).

Layers, each importing only itself and those before it:
  0 foundations   errors, fileio, schedules, parallel, targets, compile_cache, config_util, checkpoint;
                  convert/torch_io (state-dict files) and convert/common (array layouts), which know no model
  1 components    tokenizer/, model/, text/, data/, plots; convert/t5 (Hugging Face T5 folders, for text/)
  2 conversion    convert/ (the model converters)
  3 runs and jobs runs, sample, generate, run_config, train/, eval/, benchmarks/; convert/import_torch and
                  convert/export (whole runs to and from the official files)
  4 commands      commands/ (argparse, printing, the dispatcher)
configs/ (shipped as infinity_jax.configs) imports only configs, config_util, schedules and errors.
Library code (layers 0-3) builds no argparse parser, and no two modules import each other, even lazily.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "infinity_jax"
CONFIGS = ROOT / "configs"

LAYERS = (
    (
        "errors",
        "fileio",
        "schedules",
        "parallel",
        "targets",
        "compile_cache",
        "config_util",
        "checkpoint",
        "convert.torch_io",
        "convert.common",
    ),
    ("tokenizer", "model", "text", "data", "plots", "convert.t5"),
    ("convert",),
    (
        "runs",
        "sample",
        "generate",
        "run_config",
        "train",
        "eval",
        "benchmarks",
        "convert.export",
        "convert.import_torch",
    ),
    ("commands",),
)
# within a layer: pairs (importer, imported) that would tangle it
FORBIDDEN = {("runs", p) for p in ("sample", "generate", "train", "eval", "benchmarks")} | {
    ("train", "eval"),
    ("eval", "train"),
    ("model", "data"),
    ("tokenizer", "model"),
}
CONFIG_MAY_IMPORT = (
    "infinity_jax.configs",
    "infinity_jax.config_util",
    "infinity_jax.schedules",
    "infinity_jax.errors",
)
# our modules a function may import lazily: they carry grain / tfds (data sources and pipeline: not in
# sampling or benchmarks of the model) or Pallas TPU kernels (loaded only when the splash kernel is chosen)
LAZY_OK = ("infinity_jax.data.sources", "infinity_jax.data.pipeline", "infinity_jax.model.attention_tpu")


def _module_files() -> dict[str, pathlib.Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted(CONFIGS.rglob("*.py")):
        parts = ["infinity_jax", "configs", *path.relative_to(CONFIGS).with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = _module_files()


def _imports(module: str, path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import in the file, resolved to a module of
    FILES where it names one (`from pkg import mod` -> pkg.mod)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in FILES else base for a in node.names]
        else:
            continue
        out += [(name, in_function(node), node.lineno) for name in names]
    return out


def _owner(module: str) -> str | None:
    """The area a module belongs to: 'model' for infinity_jax.model.layers, 'runs' for infinity_jax.runs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "infinity_jax" else None


def _layer(module: str) -> int | None:
    """The layer of the longest LAYERS entry naming the module or a package above it."""
    rel = module.removeprefix("infinity_jax.")
    found = [
        (len(entry), i)
        for i, names in enumerate(LAYERS)
        for entry in names
        if rel == entry or rel.startswith(entry + ".")
    ]
    return max(found)[1] if found else None


def _graph() -> dict[str, set[str]]:
    return {m: {name for name, _, _ in _imports(m, p) if name in FILES and name != m} for m, p in FILES.items()}


def test_every_module_has_a_layer():
    missing = sorted(
        m
        for m in FILES
        if m not in ("infinity_jax", "infinity_jax.__main__") and _owner(m) != "configs" and _layer(m) is None
    )
    assert not missing, f"modules in no layer (add them to LAYERS in this test): {missing}"


def test_imports_go_down_the_layers_only():
    bad = []
    for module, path in FILES.items():
        if _layer(module) is None:  # configs (next test), the package's __init__ and __main__
            continue
        for name, _, line in _imports(module, path):
            if name not in FILES or _owner(name) is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if _owner(name) == "configs":
                if _owner(module) not in ("commands", "run_config"):
                    bad.append(f"{where}: configs are read through config_util.load_config")
            elif _layer(name) > _layer(module):
                bad.append(f"{where} (layer {_layer(name)} above {_layer(module)})")
            elif (_owner(module), _owner(name)) in FORBIDDEN:
                bad.append(f"{where} ({_owner(module)} -> {_owner(name)})")
    assert not bad, "\n".join(bad)


def test_configs_import_only_configs_and_the_config_helpers():
    bad = []
    for module, path in FILES.items():
        if _owner(module) != "configs":
            continue
        for name, _, line in _imports(module, path):
            if name.startswith("infinity_jax") and not name.startswith(CONFIG_MAY_IMPORT):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its modules is not a cycle between modules
    cycles = [c for c in cycles if not all(m.startswith(c[0]) for m in c[1:]) or len(c) > 2]
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(m for m in FILES if _owner(m) not in ("commands", "configs", None)))
def test_library_modules_build_no_command_line(module):
    source = FILES[module].read_text()
    assert "argparse" not in source, f"{module} uses argparse: command-line code goes to infinity_jax/commands/"


def test_library_imports_of_the_package_are_at_module_level():
    """Function-level imports of our own modules hide the graph: only LAZY_OK may be lazy (third-party modules
    such as torch, tfds and PIL may be, where a command must not pay for them). Commands are not checked: the
    dispatcher imports each one lazily anyway."""
    bad = []
    for module, path in FILES.items():
        if _owner(module) in ("commands", "configs", None):
            continue
        for name, lazy, line in _imports(module, path):
            if lazy and name.startswith("infinity_jax") and name not in LAZY_OK:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert not bad, f"{len(bad)} function-level imports:\n" + "\n".join(bad)
