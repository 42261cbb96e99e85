"""Import hygiene: `import fastcas` loads no heavy library; every fastcas import points down the layer stack, with no
circles."""

import ast
import subprocess
import sys
from pathlib import Path


def test_import_fastcas_loads_no_heavy_libraries():
    code = (
        "import sys, fastcas, fastcas.sampling.weights, fastcas.sampling.sampler, fastcas.dataset.reader,"
        " fastcas.dataset.shards,"
        " fastcas.dataset.classes, fastcas.integrations;"
        "heavy = [m for m in ('torch', 'nvidia.dali', 'cupy', 'numba') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


LAYERS = ("core", "dataset", "sampling", "mix", "loading", "scoring", "train", "integrations", "tools", "cli")
PACKAGE = Path(__file__).resolve().parents[2] / "fastcas"


def _imports():
    """{module: set of fastcas modules it imports anywhere (lazy imports included)}."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        pkg = mod if parts[-1] == "__init__" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        out[mod] = {t for t in targets if t.startswith("fastcas.")}
    return out


def _layer(mod: str):
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer_package():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} -> {t}" for m, ts in _imports().items() for t in ts
                    if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m))
    assert upward == []


def test_no_import_circles_between_modules():
    mods = _imports()
    graph = {m: {t if t in mods else t.rpartition(".")[0] for t in ts} & set(mods) - {m} for m, ts in mods.items()}
    # a package __init__ importing its own children is not a circle
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_only_the_pipeline_imports_dali_and_only_the_mix_backend_loads_kernels():
    mods = _imports()
    dali, kernels = [], []
    for f in PACKAGE.rglob("*.py"):
        text = f.read_text()
        if "nvidia.dali" in text and ("import nvidia.dali" in text or "from nvidia.dali" in text):
            dali.append(f.relative_to(PACKAGE).as_posix())
    kernels = sorted(m for m, ts in mods.items() if any(t.startswith("fastcas.kernels") for t in ts))
    assert dali == ["loading/pipeline.py"]
    assert kernels == ["fastcas.mix._backend"]
