"""The tree's rules, read from the source: arrows between subpackages go one way, no module
imports itself back through others, modules stay small, the library never imports torch, and
the public names stay importable."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "dq_jax"
# What each subpackage may import besides itself: model and data at the bottom (quant and
# parallel beneath model), export above model, inference and training above them, the
# top-level modules (spec, stages, pipeline, planner, size) above everything.
ALLOWED = {
    "utils": set(),
    "quant": {"utils"},
    "parallel": {"quant", "utils"},
    "data": {"utils"},
    "model": {"quant", "parallel", "utils"},
    "export": {"model", "quant", "utils"},
    "inference": {"data", "export", "model", "parallel", "quant", "utils"},
    "training": {"data", "inference", "model", "parallel", "quant", "utils"},
}
MAX_LINES = 350
LONG_DATA_TABLES = {"dq_jax/data/demo_task.py"}  # the demo task's word lists and templates


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every dq_jax module `path` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dq_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dq_jax"):
            for a in node.names:  # `from dq_jax.model import hf` imports the module dq_jax.model.hf
                sub = f"{node.module}.{a.name}"
                out.add(
                    sub
                    if (LIB.parent / (sub.replace(".", "/") + ".py")).exists()
                    or (LIB.parent / sub.replace(".", "/")).is_dir()
                    else node.module
                )
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _subpackage(module: str) -> str:
    """`model` for dq_jax.model and dq_jax.model.hf; `<top>` for dq_jax and dq_jax.pipeline."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (LIB / parts[1]).is_dir()) else "<top>"


def test_subpackages_import_only_what_lies_below_them():
    wrong = sorted(
        f"{m} -> {i}"
        for m, deps in _graph().items()
        for i in deps
        if _subpackage(m) in ALLOWED
        and _subpackage(i) != _subpackage(m)
        and _subpackage(i) not in ALLOWED[_subpackage(m)]
    )
    assert not wrong, wrong
    assert set(ALLOWED) == {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}


def test_no_import_cycle_between_modules():
    graph = _graph()
    # Tarjan's strongly connected components: a cycle is a component of more than one module
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_modules_stay_small():
    long = {
        str(p.relative_to(REPO)): n
        for d in ("dq_jax", "train", "bench", "configs", "tests")
        for p in (REPO / d).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= LONG_DATA_TABLES, long


def test_the_library_never_imports_torch():
    offenders = [
        str(p.relative_to(REPO))
        for p in LIB.rglob("*.py")
        if any(
            isinstance(n, (ast.Import, ast.ImportFrom))
            and any(
                (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] == "torch" for a in n.names
            )
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "name, attribute",
    [
        ("hf", "load_pretrained"),
        ("hf", "save_pretrained"),
        ("modeling", "Seq2SeqLM"),
        ("quant", "symmetric"),
        ("quant", "ternary"),
        ("quant", "binary"),
        ("distill", "layer_map"),
        ("QuantConfig", None),
        ("ModelConfig", None),
    ],
)
def test_the_public_names_are_importable_from_dq_jax(name, attribute):
    import dq_jax

    value = getattr(dq_jax, name)
    assert attribute is None or callable(getattr(value, attribute))


def test_importing_the_package_loads_nothing_heavy():
    code = (
        "import sys, dq_jax; from dq_jax import quant; from dq_jax.quant import packing, config; "
        "assert not {'jax', 'flax', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_every_module_imports():
    for path in sorted(LIB.rglob("*.py")):
        importlib.import_module(_module_name(path))
