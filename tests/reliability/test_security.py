"""Untrusted files: nothing in a prototxt, caffemodel or dataset gets to run code or a shell.

* ``param_str`` is read with ``ast.literal_eval`` only;
* the source never calls eval/exec, unpickles, ``torch.load`` without ``weights_only=True``, or starts a shell
  (an AST scan of ``netspec/``, with the documented exceptions listed below);
* ``NETSPEC_FORBID_PYTHON_LAYERS=1`` refuses Python layers before their module is imported;
* paths from prototxts (data sources, list files, image paths, snapshot prefixes, mean files, net files) are
  used literally: no ``$(...)``, backtick or ``~`` expansion.
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from netspec.formats import binary, prototxt
from netspec.data import datum as D
from netspec.data.lmdb_io import LMDBWriter
from netspec.errors import DataError, LayerError, NetspecError
from netspec.layers.python import parse_param_str

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "netspec"

HOSTILE_PARAM_STRS = [
    "__import__('os').system('touch X')",
    "{'source': __import__('os').system('touch X')}",
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', 'X'])",
    "(lambda: open('X', 'w'))()",
    "{'a': 1} if open('X', 'w') else {}",
    "eval(\"__import__('os').system('touch X')\")",
]


# ============================================================================================== param_str

@pytest.mark.parametrize("text", HOSTILE_PARAM_STRS)
def test_param_str_is_never_evaluated(fresh_cwd, text):
    with pytest.raises(LayerError, match="is not a Python literal"):
        parse_param_str(text)
    assert not (fresh_cwd / "X").exists()


def test_param_str_of_a_builtin_python_data_layer(fresh_cwd):
    """The FCN data layers read their param_str: a hostile one is an error naming the layer, nothing runs."""
    from netspec.net.pycaffe import TEST, Net
    for text in HOSTILE_PARAM_STRS:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        net = (f'layer {{ name: "data" type: "Python" top: "data" top: "label" python_param {{ '
               f'module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{escaped}" }} }}')
        with pytest.raises(NetspecError, match=r"layer 'data' \(Python\): .*param_str .*not a Python literal"):
            Net(prototxt.parse_net(net), TEST)
        assert not (fresh_cwd / "X").exists()


def test_param_str_literals_still_work():
    assert parse_param_str("{'split': 'train', 'mean': (104.0, 116.7, 122.7), 'seed': 1337}") == {
        "split": "train", "mean": (104.0, 116.7, 122.7), "seed": 1337}
    assert parse_param_str("") == {} and parse_param_str("  ") == {}


# ============================================================================================== source scan

#: (file relative to the repository, dotted call) -> why it is acceptable.
ALLOWED = {
    ("netspec/_moved.py", "importlib.import_module"):
        "imports a module of netspec itself, looked up by the fixed table of the modules' pre-0.2 names",
    ("netspec/layers/python.py", "importlib.import_module"):
        "a Python layer imports the module its prototxt names, as Caffe does (documented in the README; refused "
        "with NETSPEC_FORBID_PYTHON_LAYERS=1)",
    ("netspec/interop/export.py", "torch.jit.load"):
        "re-reads the TorchScript file export() has just written, to check its outputs",
    ("netspec/interop/export.py", "torch.export.load"):
        "re-reads the ExportedProgram export() has just written, to check its outputs",
}

_ALWAYS_BAD = {
    "eval", "exec", "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "marshal.load", "marshal.loads", "shelve.open",
    "os.system", "os.popen", "os.execv", "os.execl", "os.execvp", "os.execlp", "os.spawnl", "os.spawnv",
    "commands.getoutput", "pty.spawn", "torch.jit.load", "torch.export.load", "importlib.import_module",
    "__import__", "importlib.util.module_from_spec", "runpy.run_path", "runpy.run_module",
    "joblib.load", "pandas.read_pickle",
}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
               "subprocess.Popen", "subprocess.getoutput", "subprocess.getstatusoutput"}


def _aliases(tree):
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(func, aliases):
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    head = aliases.get(func.id, func.id)
    return ".".join([head] + parts[::-1])


def _kw(call, name):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(text, filename="<src>"):
    """Dangerous calls in Python source: a list of (line, dotted call, why)."""
    tree = ast.parse(text, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        if name in _ALWAYS_BAD:
            found.append((node.lineno, name, "runs or unpickles code"))
        elif name in ("torch.load", "torch.serialization.load"):
            if not _is_true(_kw(node, "weights_only")):
                found.append((node.lineno, name, "torch.load without weights_only=True unpickles code"))
        elif name in ("numpy.load", "np.load"):
            if _kw(node, "allow_pickle") is not None and not (
                    isinstance(_kw(node, "allow_pickle"), ast.Constant) and _kw(node, "allow_pickle").value is False):
                found.append((node.lineno, name, "numpy.load with allow_pickle"))
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            if name != "yaml.load" or "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
                found.append((node.lineno, name, "yaml.load without SafeLoader"))
        elif name in _SUBPROCESS:
            shell = _kw(node, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                found.append((node.lineno, name, "subprocess with shell=True"))
            elif node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                found.append((node.lineno, name, "subprocess with a command string (give a list)"))
    return found


def test_scanner_finds_planted_calls():
    planted = textwrap.dedent('''
        import pickle as pk, subprocess, torch, numpy as np
        from os import system
        eval("1"); exec("x = 1"); pk.loads(b""); system("ls")
        torch.load("w.pt"); torch.load("w.pt", weights_only=False); np.load("a.npy", allow_pickle=True)
        subprocess.run("ls -l", shell=True); subprocess.run(["ls"], shell=flag); subprocess.call(f"ls {x}")
        # fine:
        torch.load("w.pt", weights_only=True); subprocess.run(["dot", "-Tpng"]); net.eval(); np.load("a.npy")
    ''')
    found = [name for _, name, _ in scan_source(planted)]
    assert found == ["eval", "exec", "pickle.loads", "os.system", "torch.load", "torch.load", "numpy.load",
                     "subprocess.run", "subprocess.run", "subprocess.call"]


def test_package_source_has_no_code_execution_or_shell():
    files = sorted(p for p in PACKAGE.rglob("*.py") if not p.name.endswith("_pb2.py"))
    assert len(files) > 30
    problems = []
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for line, name, why in scan_source(path.read_text(encoding="utf-8"), rel):
            if (rel, name) not in ALLOWED:
                problems.append(f"{rel}:{line}: {name}: {why}")
    assert not problems, "\n".join(problems)


# ============================================================================================== Python layers

EVIL_MODULE = '''
open("IMPORTED", "w").write("the module ran")
import netspec
class Evil(netspec.Layer):
    def setup(self, bottom, top):
        open("SETUP", "w").write("setup ran")
    def reshape(self, bottom, top):
        top[0].reshape(1)
    def forward(self, bottom, top):
        top[0].data[...] = 1
'''

EVIL_NET_CHILD = '''
import sys
sys.path.insert(0, sys.argv[1])
import netspec
from netspec import prototxt
from netspec.errors import LayerError
net = 'layer { name: "evil" type: "Python" top: "y" python_param { module: "evil_layer" layer: "Evil" } }'
try:
    netspec.Net(prototxt.parse_net(net), netspec.TEST)
    print("BUILT")
except LayerError as e:
    print("REFUSED", e)
'''


@pytest.mark.parametrize("forbid", ["1", None])
def test_forbid_python_layers_refuses_before_import(tmp_path, forbid):
    (tmp_path / "evil_layer.py").write_text(EVIL_MODULE)
    (tmp_path / "child.py").write_text(EVIL_NET_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "NETSPEC_FORBID_PYTHON_LAYERS"}
    env["PYTHONPATH"] = str(tmp_path)
    if forbid:
        env["NETSPEC_FORBID_PYTHON_LAYERS"] = forbid
    proc = subprocess.run([sys.executable, "child.py", str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if forbid:
        assert proc.stdout.startswith("REFUSED"), proc.stdout
        assert "NETSPEC_FORBID_PYTHON_LAYERS" in proc.stdout and "evil_layer.Evil" in proc.stdout
        assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "SETUP").exists()
    else:  # the control: without the switch the module is imported (as Caffe would)
        assert proc.stdout.startswith("BUILT"), proc.stdout + proc.stderr[-2000:]
        assert (tmp_path / "IMPORTED").exists()


# ============================================================================================== literal paths

HOSTILE_NAMES = ["$(touch X)", "`touch X`", "~", "a;touch X", "a|touch X", "${HOME}", "a'b\"c", "* ?[x]"]


@pytest.fixture
def sandbox(fresh_cwd, monkeypatch, tmp_path_factory):
    """The working directory, with HOME pointed at an empty directory that must stay empty."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    yield fresh_cwd
    assert list(home.iterdir()) == [], "something expanded '~' or $HOME"
    assert not any(p.name in ("X", "Y") for p in fresh_cwd.rglob("*")), "a shell command ran"


def _quoted(path):
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def _datum(i):
    return D.array_to_datum(np.full((3, 4, 4), i, np.uint8), label=i).SerializeToString()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_data_source_and_mean_file_are_literal(sandbox, name):
    from netspec.net.pycaffe import TEST, Net
    db = Path(name + "_lmdb")
    with LMDBWriter(db) as w:
        for i in range(2):
            w.put(f"{i:08d}", _datum(i))
    mean = Path(name + "_mean.binaryproto")
    binary.write_blobproto(mean, np.ones((1, 3, 4, 4), np.float32), legacy_dims=True)
    text = (f'layer {{ name: "d" type: "Data" top: "x" top: "y" data_param {{ source: "{_quoted(db)}" '
            f'batch_size: 2 }} transform_param {{ mean_file: "{_quoted(mean)}" }} }}')
    net = Net(prototxt.parse_net(text), TEST)
    out = net.forward()
    assert out["x"][1, 0, 0, 0] == 0.0 and out["x"][0, 0, 0, 0] == -1.0
    # A name that does not exist is reported literally, not expanded.
    missing = text.replace("_lmdb", "_nothing")
    with pytest.raises(DataError) as err:
        Net(prototxt.parse_net(missing), TEST)
    assert name + "_nothing" in str(err.value)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_image_list_paths_are_literal(sandbox, name):
    import cv2
    from netspec.net.pycaffe import TEST, Net
    img_dir = Path(name + "_images")
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "a.png"), np.full((4, 5, 3), 7, np.uint8))
    listing = Path(name + "_list.txt")
    listing.write_text(f"{img_dir}/a.png 1\n{img_dir}/$(touch Y).png 2\n")
    text = (f'layer {{ name: "d" type: "ImageData" top: "x" top: "y" image_data_param {{ '
            f'source: "{_quoted(listing)}" batch_size: 1 }} }}')
    net = Net(prototxt.parse_net(text), TEST)
    assert net.forward()["x"].max() == 7
    with pytest.raises(DataError, match=r"\$\(touch Y\)\.png"):
        net.forward()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_snapshot_prefix_and_net_path_are_literal(sandbox, name, tiny_net_text):
    from netspec.solver.solvers import Solver
    net_file = Path(name + "_net.prototxt")
    net_file.write_text(tiny_net_text(loss=True))
    solver = Path(name + "_solver.prototxt")
    solver.write_text(f'net: "{_quoted(net_file)}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
                      f'snapshot: 2\nsnapshot_prefix: "{_quoted(name)}/snap_{_quoted(name)}"\n')
    s = Solver(str(solver))
    s.step(2)
    model = Path(name) / f"snap_{name}_iter_2.caffemodel"
    state = Path(name) / f"snap_{name}_iter_2.solverstate"
    assert model.is_file() and state.is_file()
    assert binary.read_solverstate(state).learned_net == str(model)


SAFE_MODE_CHILD = r'''
import sys
sys.path.insert(0, sys.argv[1])
import netspec
from netspec import prototxt
from netspec.data import synthetic
from netspec.errors import LayerError
synthetic.pack("d", n_train=2, n_val=1, size=8)
ok = ('layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "netspec.data.seg" '
      'layer: "SegDataLayer" param_str: "{\'source\': \'d/train\', \'batch_size\': 1}" } }')
netspec.Net(prototxt.parse_net(ok), netspec.TRAIN)
print("BUILT own layer")
try:
    netspec.Net(prototxt.parse_net(ok.replace("netspec.data.seg", "netspec.layers.seg_lmdb")
                                   .replace("SegDataLayer", "DataError")), netspec.TRAIN)
    print("BUILT non-layer")
except LayerError as e:
    print("REFUSED", e)
'''


def test_safe_mode_keeps_netspecs_own_python_data_layers(tmp_path):
    (tmp_path / "child.py").write_text(SAFE_MODE_CHILD)
    env = dict(os.environ, NETSPEC_FORBID_PYTHON_LAYERS="1")
    proc = subprocess.run([sys.executable, "child.py", str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "BUILT own layer"
    assert lines[1].startswith("REFUSED") and "is not a netspec Layer class" in lines[1]
