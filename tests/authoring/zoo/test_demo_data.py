"""The demo's data on first use: netspec.authoring.zoo.demo.pack_missing_data packs data/demo when a solver's
net reads it with SegDataLayer and it is missing (tools/train.py calls it; the layer itself never packs)."""
import os

import pytest

from netspec.formats import prototxt
from netspec.authoring.zoo import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def small_pack(monkeypatch):
    """pack() at a test size, recording the roots it was called with."""
    from netspec.data import synthetic
    calls = []
    real = synthetic.pack

    def pack(root, *a, **kw):
        calls.append(root)
        return real(root, n_train=2, n_val=1, size=8)
    monkeypatch.setattr(synthetic, "pack", pack)
    return calls


def test_the_demo_solver_packs_data_demo_once(tmp_path, monkeypatch, small_pack):
    monkeypatch.chdir(tmp_path)
    sparam = prototxt.read_solver(os.path.join(REPO, "solvers", "demo.prototxt"))
    assert demo.pack_missing_data(sparam, REPO)  # the net files, relative to the solver's checkout
    assert small_pack == [os.path.join("data", "demo")]
    assert (tmp_path / "data" / "demo" / "train" / "images").is_dir()
    assert not demo.pack_missing_data(sparam, REPO)  # there now
    assert len(small_pack) == 1


def test_other_sources_and_layers_are_left_alone(tmp_path, monkeypatch, small_pack):
    from netspec.proto import caffe_pb2
    monkeypatch.chdir(tmp_path)
    net = prototxt.parse_net(
        'layer { name: "d" type: "Python" top: "data" top: "label" python_param { module: "netspec.data.seg" '
        'layer: "SegDataLayer" param_str: "{\'source\': \'data/idd/train\'}" } }\n'
        'layer { name: "v" type: "Python" top: "a" top: "b" python_param { module: "voc_layers" '
        'layer: "VOCSegDataLayer" param_str: "{\'voc_dir\': \'data/demo/x\'}" } }\n'
        'layer { name: "bad" type: "Python" top: "c" top: "e" python_param { module: "netspec.data.seg" '
        'layer: "SegDataLayer" param_str: "not a literal(" } }')
    sparam = caffe_pb2.SolverParameter(train_net_param=net, test_net=["no/such.prototxt"])
    assert not demo.pack_missing_data(sparam, str(tmp_path))
    assert small_pack == [] and not (tmp_path / "data").exists()
    net.layer[0].python_param.module = "netspec.layers.seg_lmdb"  # the layer's own module name counts too
    net.layer[0].python_param.param_str = "{'source': 'data/demo/val'}"
    sparam = caffe_pb2.SolverParameter(train_net_param=net)
    assert demo.pack_missing_data(sparam)
    assert small_pack == [os.path.join("data", "demo")]
