"""The package's folders follow the pipeline (docs/architecture.md): every import inside ``netspec/``, at module
level or in a function, goes from a folder to one it may use, and the modules' 0.1 paths still import."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "netspec"

#: what each folder may import besides the base (errors.py, registry.py, proto/).
MAY_USE = {
    "formats": set(),
    "data": {"formats"},
    "passes": {"formats"},
    "layers": {"formats", "passes", "data"},
    "net": {"formats", "passes", "layers", "data"},
    "solver": {"formats", "passes", "layers", "net", "data"},
    "tools": {"formats", "passes", "layers", "net", "data", "solver", "authoring", "interop"},
    "interop": {"formats", "passes", "layers", "net", "data"},
    "authoring": {"formats", "passes", "layers", "net", "data"},
}
BASE = {"errors", "registry", "proto", "_moved", "progress"}

#: (file, folder it imports) -> why the arrow points the wrong way.
EXCEPTIONS = {
    ("layers/python.py", "net"): "a Python layer hands pycaffe Blobs to user code, as Caffe's does",
    ("layers/__init__.py", "authoring"): "netspec.layers doubles as the DSL's L (L.Convolution(...)), loaded lazily",
    ("data/fcn_layers.py", "layers"): "the module path FCN's prototxts name; re-exports layers/fcn_data.py",
    ("data/seg.py", "layers"): "SegDataLayer's old module path, kept importable (re-exports layers/seg_lmdb.py)",
}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path):
    rel = path.relative_to(PACKAGE.parent)
    package = list(rel.parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            if node.module:
                yield module
            else:
                yield from (f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_every_import_follows_the_pipeline():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if "/" not in rel:  # netspec/__init__.py, errors.py, registry.py, _moved.py: the base
            continue
        here = rel.split("/")[0]
        if here == "proto":
            continue
        for module in _imports(path):
            if not module.startswith("netspec."):
                continue
            there = _folder(module)
            if there in BASE or there == here or there in MAY_USE[here] or (rel, there) in EXCEPTIONS:
                continue
            wrong.append(f"netspec/{rel} imports {module} ({here} -> {there})")
    assert not wrong, "imports against the pipeline (docs/architecture.md):\n" + "\n".join(wrong)


def test_every_exception_is_still_needed():
    used = set()
    for rel, there in EXCEPTIONS:
        if any(_folder(m) == there for m in _imports(PACKAGE / rel)):
            used.add((rel, there))
    assert used == set(EXCEPTIONS), f"no longer needed: {set(EXCEPTIONS) - used}"


@pytest.mark.parametrize("old, new", [("netspec.prototxt", "netspec.formats.prototxt"),
                                      ("netspec.graph_module", "netspec.net.caffe_net"),
                                      ("netspec.upgrade", "netspec.passes.upgrade"),
                                      ("netspec.zoo.fcn", "netspec.authoring.zoo.fcn")])
def test_old_module_paths_give_the_same_module(old, new):
    import sys
    exec(f"import {old}")  # noqa: S102  (the statement a user's script has)
    exec(f"import {new}")  # noqa: S102
    assert sys.modules[old] is sys.modules[new]
    import netspec.authoring.zoo as zoo
    assert callable(zoo.fcn) and not isinstance(zoo.fcn, type(sys)), "an old path re-set a package attribute"


def test_old_names_from_the_packages_that_were_modules():
    from netspec.net import TEST, Net
    from netspec.net.pycaffe import Net as Net2
    from netspec.solver import SGDSolver, get_solver
    from netspec.solver.solvers import SGDSolver as S2, get_solver as g2
    assert (Net, SGDSolver, get_solver) == (Net2, S2, g2) and TEST == 1
    import netspec.net
    with pytest.raises(AttributeError, match="netspec.net' has no attribute 'nothing'"):
        netspec.net.nothing


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_even_through_imports_inside_functions():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module in _imports(path):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            # a package's __init__ runs before its modules: importing from one's own package is no circle
            if module and module != name and not name.startswith(module + "."):
                targets.add(module)
        graph[name] = targets
    circles, index, low, stack, on_stack = [], {}, {}, [], set()

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"
