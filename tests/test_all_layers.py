"""Registry sweep: every registered layer type builds, runs forward and (where Caffe has one) backward on
random input, from the ``example`` its register() call gives (``example=""``: the type needs files or
user-fed arrays and has its own tests: tests/layers/test_data.py, test_python.py). A new type without an
example fails ``test_every_type_has_an_example``."""
import numpy as np
import pytest
import torch

import netspec
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2
from google.protobuf import text_format

#: Types whose top shapes depend on the values (Caffe reshapes them in Forward).
DATA_DEPENDENT_SHAPES = {"DetectionEvaluate", "DetectionOutput", "Filter", "Proposal"}


def example(type_name):
    """(prototxt, backward) from the type's registry entry (``example=``, ``backward=``); None: own tests."""
    entry = netspec.LAYERS.get(type_name)
    return (entry.example, entry.backward) if entry.example else None


def test_every_type_has_an_example():
    missing = [t for t in netspec.LAYERS if netspec.LAYERS.get(t).example is None]
    assert not missing, f"give these types an example= in their register() call: {missing}"


@pytest.mark.parametrize("type_name", sorted(t for t in netspec.LAYERS if example(t) is not None))
def test_builds_runs_and_backprops(type_name):
    text, backward = example(type_name)
    param = text_format.Parse("force_backward: true\n" + text, caffe_pb2.NetParameter())
    torch.manual_seed(0)
    net = Net(param, netspec.TRAIN)
    rng = np.random.default_rng(0)
    for name in net.inputs:
        shape = net.blobs[name].shape
        if name in ("label", "sim"):
            hi = net.blobs["x"].shape[1] if "x" in net.blobs and name == "label" else 2
            if type_name in ("Filter",):
                hi = 2
            if type_name == "BatchReindex":
                hi = shape[0]
            net.blobs[name].data[...] = rng.integers(0, hi, shape)
        elif name == "x" and type_name == "Embed":
            net.blobs[name].data[...] = 0
        else:
            net.blobs[name].data[...] = rng.standard_normal(shape)
    declared = {name: tuple(b.shape) for name, b in net.blobs.items()}
    out = net.forward()
    ran = {name: tuple(b.data.shape) for name, b in net.blobs.items()}
    if type_name not in DATA_DEPENDENT_SHAPES:
        assert ran == declared, f"{type_name}: shapes from Net() (the registry's reshape_like, a top_shapes or " \
                                "a meta run) differ from the forward's"
    for k, v in out.items():
        assert np.all(np.isfinite(v)), f"{type_name}: output {k} not finite"
    if backward:
        for o in net.outputs:
            if not any(o == t for t, _ in net.loss_outputs()):
                net.blobs[o].diff[...] = rng.standard_normal(net.blobs[o].shape)
        net.backward()
        for name, b in net.blobs.items():
            assert np.all(np.isfinite(b.diff)), f"{type_name}: diff of {name} not finite"
        grads = [net.blobs[i].diff for i in net.inputs] + [p.diff for ps in net.params.values() for p in ps]
        assert any(np.any(g) for g in grads), f"{type_name}: backward reached no input or param"
