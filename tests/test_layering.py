"""The package's import layering: every module imports only from its own layer or below, and no two
modules import each other through any chain (imports inside functions included), so that a new circle
fails here rather than at some user's first import."""

import ast
from pathlib import Path

import grpo_guard

ROOT = Path(grpo_guard.__file__).resolve().parent

#: bottom to top; a module may import from its own layer (within its own package for the middle layers) or
#: from a lower one. ``world`` holds the toy worlds' model code; backbones and rewards plug it in.
LAYERS = [
    {"core", "seeding", "errors", "registry", "malloc", "stopping", "cache_entry"},
    {"config", "image_stats", "sharding", "prompt_sets", "golds"},  # prompt_sets: GenEval's vocabulary, used by rewards
    {"world"},
    {"backbones", "rewards", "prompts"},
    {"train"},
    {"parallel"},
    {"study", "bench", "report", "demo", "mechanism", "plan"},
    {"cli", "__main__", ""},
]
#: in these layers the parts are siblings that must not import each other
SEPARATE = {3}


def _module_name(path: Path) -> str:
    parts = ["grpo_guard", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets.update(f"{mod}.{a.name}" if not node.module else mod for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("grpo_guard"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("grpo_guard"))
    known = set(graph) | {_module_name(d / "__init__.py") for d in ROOT.rglob("*") if d.is_dir()}
    # "from . import x" names a module when x is one, else its package
    return {m: {t if t in known else t.rsplit(".", 1)[0] for t in ts} - {m} for m, ts in graph.items()}


def _layer(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i, top
    raise AssertionError(f"{module}: not in any layer of tests/test_layering.py; add its package to LAYERS")


def test_every_import_goes_down_the_layers():
    bad = []
    for module, targets in _imports().items():
        (lm, pm) = _layer(module)
        for t in targets:
            lt, pt = _layer(t)
            if lt > lm or (lt == lm and lm in SEPARATE and pt != pm):
                bad.append(f"{module} -> {t}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    graph = _imports()
    # a package's __init__ may import its own modules (the public names); edges into it are kept, edges from
    # it to its submodules are not followed, which leaves the circles between modules
    def edges(m):
        return {t for t in graph.get(m, ()) if not t.startswith(m + ".")}

    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_the_layering_test_sees_a_circle(monkeypatch):
    """The check above can fail: a made-up upward import is reported."""
    real = _imports()
    fake = {**real, "grpo_guard.core.loss": real["grpo_guard.core.loss"] | {"grpo_guard.train.loop"}}
    monkeypatch.setattr(__import__(__name__), "_imports", lambda: fake)
    try:
        test_every_import_goes_down_the_layers()
    except AssertionError as e:
        assert "grpo_guard.core.loss -> grpo_guard.train.loop" in str(e)
    else:
        raise AssertionError("an upward import was not reported")
