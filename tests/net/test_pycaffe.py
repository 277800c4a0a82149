"""pycaffe's surface: `import netspec as caffe` runs typical pycaffe code."""
import sys
import textwrap

import numpy as np
import pytest
import torch

import netspec as caffe
from netspec.errors import NetspecError, WeightsError

NET = textwrap.dedent("""
    name: "surface"
    force_backward: true
    layer { name: "input" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
      convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "sq" type: "Python" bottom: "conv1" top: "sq"
      python_param { module: "pysquare" layer: "Square" param_str: "{'k': 0.5}" } }
    layer { name: "score" type: "Convolution" bottom: "sq" top: "score"
      convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" loss_weight: 2 }
""")

PYLAYER = textwrap.dedent("""
    import netspec as caffe
    from netspec.layers.python import parse_param_str

    class Square(caffe.Layer):
        '''top = k * bottom^2, with its own numpy backward.'''
        def setup(self, bottom, top):
            self.k = parse_param_str(self.param_str)["k"]
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top):
            top[0].data[...] = self.k * bottom[0].data ** 2
        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = 2 * self.k * bottom[0].data * top[0].diff
""")


@pytest.fixture
def net_file(tmp_path, monkeypatch):
    (tmp_path / "pysquare.py").write_text(PYLAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("pysquare", None)
    p = tmp_path / "net.prototxt"
    p.write_text(NET)
    return p


def _fill(net, seed=0):
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 3, net.blobs["label"].shape)


def test_constructor_forms_and_blob_api(net_file, tmp_path):
    torch.manual_seed(0)
    net = caffe.Net(str(net_file), caffe.TEST)
    w = tmp_path / "w.caffemodel"
    net.save(str(w))
    for other in (caffe.Net(str(net_file), str(w), caffe.TEST),
                  caffe.Net(str(net_file), caffe.TEST, weights=str(w)),
                  caffe.Net(str(net_file), phase=caffe.TEST, weights=str(w))):
        for layer in net.params:
            for a, b in zip(net.params[layer], other.params[layer]):
                np.testing.assert_array_equal(a.data, b.data)
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    assert list(net.params) == ["conv1", "score"]
    assert net.params["conv1"][0].data.shape == (4, 3, 3, 3)
    _fill(net)
    out = net.forward()
    assert net.blobs["loss"].shape == () and out["loss"].shape == ()
    net.blobs["data"].reshape(1, 3, 8, 8)
    net.blobs["label"].reshape(1, 1, 8, 8)
    net.reshape()
    assert net.blobs["score"].shape == (1, 3, 8, 8)


def test_python_layer_backward_inplace_and_loss_diff(net_file):
    torch.manual_seed(0)
    net = caffe.Net(str(net_file), caffe.TRAIN)
    _fill(net)
    net.forward()
    x = torch.from_numpy(net.blobs["data"].data.copy()).requires_grad_()
    w1, b1 = (torch.from_numpy(p.data.copy()) for p in net.params["conv1"])
    w2, b2 = (torch.from_numpy(p.data.copy()) for p in net.params["score"])
    c = torch.nn.functional.conv2d(x, w1, b1, padding=1)
    c.retain_grad()
    r = torch.relu(c)
    s = torch.nn.functional.conv2d(0.5 * r ** 2, w2, b2)
    lab = torch.from_numpy(net.blobs["label"].data[:, 0].astype(np.int64))
    loss = torch.nn.functional.cross_entropy(s, lab, reduction="mean")
    assert float(net.blobs["loss"].data) == pytest.approx(float(loss.detach()), rel=1e-5)
    (2 * loss).backward()
    net.clear_param_diffs()
    net.backward()
    assert float(net.blobs["loss"].diff) == 2.0                      # a loss blob's diff is its loss_weight
    np.testing.assert_allclose(net.blobs["data"].diff, x.grad.numpy(), rtol=1e-4, atol=1e-6)
    # in-place conv1: data = ReLU output, diff = gradient w.r.t. the convolution's output
    np.testing.assert_allclose(net.blobs["conv1"].data, r.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["conv1"].diff, c.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_forward_start_end_and_hooks(net_file):
    torch.manual_seed(0)
    net = caffe.Net(str(net_file), caffe.TEST)
    _fill(net)
    seen = []
    net.before_forward(lambda i: seen.append(("b", i)))
    net.after_forward(lambda i: seen.append(("a", i)))
    net.forward(end="relu1")
    assert seen == [("b", 0), ("a", 0), ("b", 1), ("a", 1), ("b", 2), ("a", 2)]
    relu = net.blobs["conv1"].data.copy()
    net.blobs["conv1"].data[...] = 0
    net.forward(start="sq")
    assert not net.blobs["sq"].data.any()                        # started from the edited blob
    assert relu.any()


def test_copy_from_shape_mismatch_names_the_layer(net_file, tmp_path):
    net = caffe.Net(str(net_file), caffe.TEST)
    w = tmp_path / "w.caffemodel"
    net.save(str(w))
    (tmp_path / "other.prototxt").write_text(NET.replace("num_output: 4", "num_output: 5").replace(
        'name: "surface"', 'name: "other"'))
    with pytest.raises(WeightsError, match=r"Cannot copy param 0 weights from layer 'conv1'; shape mismatch.*"
                                           r"rename the layer"):
        caffe.Net(str(tmp_path / "other.prototxt"), str(w), caffe.TEST)


def test_share_with_uses_the_same_tensors(net_file):
    a = caffe.Net(str(net_file), caffe.TRAIN)
    b = caffe.Net(str(net_file), caffe.TEST)
    b.share_with(a)
    a.params["conv1"][0].data[...] = 3.0
    assert (b.params["conv1"][0].data == 3.0).all()


def test_forbidding_python_layers(net_file, monkeypatch):
    from netspec.layers import python
    monkeypatch.setattr(python, "FORBID", True)
    with pytest.raises(caffe.NetspecError, match="forbidden"):
        caffe.Net(str(net_file), caffe.TEST)


def test_runtime_failures_name_the_layer_and_shapes_and_save_refuses_a_directory(tmp_path):
    import numpy as np
    import netspec
    from google.protobuf import text_format
    from netspec.errors import LayerError, WeightsError
    from netspec.proto import caffe_pb2
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "x" top: "y" '
            'convolution_param { num_output: 2 kernel_size: 3 } }')
    net = netspec.Net(text_format.Parse(text, caffe_pb2.NetParameter()), netspec.TEST)
    with pytest.raises(LayerError, match=r"layer 'conv' \(Convolution\) failed on bottoms 'x' \(2, 4, 8, 8\) "
                                         r"\(built for 'x' was \(1, 3, 8, 8\)"):
        net.forward(x=np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(WeightsError, match="is a directory"):
        net.save(str(tmp_path))
    assert list(tmp_path.parent.glob(f".{tmp_path.name}*.tmp")) == []


def test_python_layers_see_param_str_under_the_old_pycaffe_name_too(net_file):
    net = caffe.Net(str(net_file), caffe.TEST)
    layer = net.module.get_module(net._layer_names.index("sq")).layer
    assert layer.param_str == layer.param_str_ == "{'k': 0.5}"   # py-faster-rcnn's layers read param_str_


DIFFS_NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } }
layer { name: "b" type: "Power" bottom: "x" top: "b" power_param { shift: 1 } }
layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "r" type: "Reduction" bottom: "s" top: "r" }
layer { name: "out" type: "Power" bottom: "s" top: "out" power_param { scale: 3 } }
"""


def _diffs_net():
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    net = caffe.Net(text_format.Parse(DIFFS_NET, caffe_pb2.NetParameter()), caffe.TEST)
    net.blobs["x"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    return net


def test_each_blob_has_its_own_writable_diff():
    """Autograd hands the sum's gradient to both Eltwise bottoms as one tensor, and Reduction's gradient is an
    expanded scalar: each blob's diff must still be its own contiguous array (as Caffe's blobs)."""
    net = _diffs_net()
    net.forward()
    net.blobs["out"].diff[...] = 1.0
    net.backward()
    # only out's diff is set (Reduction's top has no loss weight and a zero diff): d out / d s = 3
    np.testing.assert_allclose(net.blobs["s"].diff, np.full((2, 3), 3.0))
    np.testing.assert_allclose(net.blobs["a"].diff, np.full((2, 3), 3.0))
    np.testing.assert_allclose(net.blobs["b"].diff, np.full((2, 3), 3.0))
    np.testing.assert_allclose(net.blobs["x"].diff, np.full((2, 3), 9.0))
    net.blobs["a"].diff[...] = -1.0
    net.blobs["s"].diff[0, 0] = 5.0
    np.testing.assert_allclose(net.blobs["b"].diff, np.full((2, 3), 3.0))
    assert net.blobs["s"].diff[0, 1] == 3.0 and net.blobs["s"].diff.flags.writeable


def test_expanded_gradient_becomes_a_full_diff():
    net = _diffs_net()
    net.forward()
    net.blobs["r"].diff[...] = 2.0  # Reduction SUM's top: d r / d s = 1 everywhere, an expanded tensor
    net.backward()
    d = net.blobs["s"].diff
    np.testing.assert_allclose(d, np.full((2, 3), 2.0))
    d[0, 0] = 0.0
    # written in place (not into a passing copy), and not one element seen six times
    assert net.blobs["s"].diff[0, 0] == 0.0 and net.blobs["s"].diff[1, 2] == 2.0


def test_forward_keeps_output_diffs_and_lets_inner_ones_go():
    """A diff written on an output before forward() is used by backward() (Caffe's forward does not touch diffs);
    inner blobs' diffs from the last backward read as zeros until the next one recomputes them."""
    net = _diffs_net()
    net.forward()
    net.blobs["out"].diff[...] = 1.0
    net.backward()
    assert net.blobs["a"].diff.any()
    net.blobs["out"].diff[...] = 2.0
    net.forward()
    assert not net.blobs["a"].diff.any()
    np.testing.assert_allclose(net.blobs["out"].diff, np.full((2, 3), 2.0))
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, np.full((2, 3), 6.0))


PARAM_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 1 weight_filler { type: "constant" value: 1 } } }
layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }
"""


def test_param_diffs_accumulate_and_clear_as_caffe_also_through_held_arrays():
    """Caffe's Backward adds into the param diffs; ClearParamDiffs zeroes them. An array taken from .diff before a
    clear keeps showing the parameter's diff (zeros, then the next gradient), as Caffe's blob memory does; one not
    held may be let go, which reads the same."""
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    net = caffe.Net(text_format.Parse(PARAM_NET, caffe_pb2.NetParameter()), caffe.TRAIN)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    grad_w = x.sum(0, keepdims=True)  # d sum(x w^T + b) / d w
    w, b = net.params["ip"]
    for held in (False, True):
        net.clear_param_diffs()
        net.forward()
        net.backward()
        net.forward()
        net.backward()
        np.testing.assert_allclose(w.diff, 2 * grad_w)
        np.testing.assert_allclose(b.diff, [4.0])
        arr = w.diff if held else None
        net.clear_param_diffs()
        assert not w.diff.any() and not b.diff.any()
        net.forward()
        net.backward()
        np.testing.assert_allclose(w.diff, grad_w)
        if held:
            np.testing.assert_allclose(arr, grad_w)  # the array over the diff followed the clear and the backward


SHARED_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "y" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }
"""


def test_shared_param_diff_is_the_sum_of_both_layers_gradients():
    """Caffe's shared blobs: one diff, both layers' gradients added into it, the same as the solver pass gives."""
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    net = caffe.Net(text_format.Parse(SHARED_NET, caffe_pb2.NetParameter()), caffe.TRAIN)
    x = np.random.RandomState(0).randn(2, 3).astype(np.float32)
    net.blobs["x"].data[...] = x
    w, b = (p.data.astype(np.float64) for p in net.params["a"])
    a = x @ w.T + b                 # y = a w^T + b, loss = sum(y)
    ga = np.ones((2, 3)) @ w        # d loss / d a
    gw = np.ones((2, 3)).T @ a + ga.T @ x
    gb = np.full(3, 2.0) + ga.sum(0)
    net.clear_param_diffs()
    net.forward()
    net.backward()
    assert net.params["a"][0]._param is net.params["b"][0]._param
    np.testing.assert_allclose(net.params["a"][0].diff, gw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["b"][1].diff, gb, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["a"].diff, ga, rtol=1e-5)
    net.clear_param_diffs()
    net.forward_backward()
    np.testing.assert_allclose(net.params["a"][0].diff, gw, rtol=1e-5, atol=1e-5)


RANGE_NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.7 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }
"""


def _range_net():
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    torch.manual_seed(3)
    net = caffe.Net(text_format.Parse(RANGE_NET, caffe_pb2.NetParameter()), caffe.TRAIN)
    x = np.random.RandomState(0).randn(2, 3).astype(np.float32)
    net.blobs["x"].data[...] = x
    w1, b1 = (p.data.astype(np.float64) for p in net.params["ip1"])
    w2 = net.params["ip2"][0].data.astype(np.float64)
    h = x @ w1.T + b1
    return net, x, h, np.maximum(h, 0), w1, w2


def test_backward_from_a_partial_forward_as_deepdream_runs_it():
    """pycaffe's deepdream loop: forward(end=L), set L's diff, backward(start=L). Caffe's BackwardFromTo runs ip2,
    relu (in place: h's diff becomes the gradient at ip1's output) and ip1 (the input's diff, ip1's param diffs)."""
    net, x, h, r, w1, w2 = _range_net()
    net.forward(end="ip2")
    y = net.blobs["y"].data.astype(np.float64)
    net.blobs["y"].diff[...] = net.blobs["y"].data
    out = net.backward(start="ip2", diffs=["h"])
    gh = (y @ w2) * (h > 0)
    assert list(out) == ["x", "h"]  # the inputs' diffs, and those asked for (pycaffe's diffs=)
    np.testing.assert_allclose(out["h"], gh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["x"], gh @ w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip2"][0].diff, y.T @ r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][0].diff, gh.T @ x, rtol=1e-5, atol=1e-6)


def test_backward_over_one_layer_uses_its_top_diff_as_it_stands():
    """BackwardFromTo(ip2, ip2) after a whole forward: only ip2 runs, from y's diff as the user set it; h's diff
    is ip2's bottom diff (the ReLU below is outside the range, so no mask); ip1's param diffs are untouched."""
    net, x, h, r, w1, w2 = _range_net()
    net.clear_param_diffs()
    net.forward()
    g = np.random.RandomState(1).randn(2, 2)
    net.blobs["y"].diff[...] = g
    out = net.backward(start="ip2", end="ip2")
    assert list(out) == ["h"]
    np.testing.assert_allclose(out["h"], g @ w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip2"][0].diff, g.T @ r, rtol=1e-5, atol=1e-6)
    assert not net.params["ip1"][0].diff.any()
    # a range from the loss layer (its top diff: its loss weight, 1; Reduction SUM) down to the ReLU, which masks
    # h's diff in place
    net.forward()
    out = net.backward(start="loss", end="relu")
    np.testing.assert_allclose(out["h"], (np.ones((2, 2)) @ w2) * (h > 0), rtol=1e-5, atol=1e-6)


def test_backward_range_errors_name_the_layers():
    net, *_ = _range_net()
    net.forward(end="relu")
    with pytest.raises(NetspecError, match="last forward ran layers 'in' to 'relu'"):
        net.backward(start="ip2")
    net.forward()
    with pytest.raises(NetspecError, match="start must not come before end"):
        net.backward(start="ip1", end="ip2")


FUSED_NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { name: "a" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 3 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "b" type: "Convolution" bottom: "x" top: "b" convolution_param { num_output: 3 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "relu" type: "ReLU" bottom: "s" top: "s" }
layer { name: "bn" type: "BatchNorm" bottom: "s" top: "s" }
layer { name: "scale" type: "Scale" bottom: "s" top: "s" scale_param { bias_term: true } }
layer { name: "c" type: "Convolution" bottom: "s" top: "c" convolution_param { num_output: 2 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "loss" type: "Reduction" bottom: "c" top: "loss" loss_weight: 1 }
"""


def test_backward_range_and_fused_chains():
    """After a whole forward the Eltwise -> ReLU and BatchNorm -> Scale chains ran fused: a range may start or
    end at a chain's ends (the version layer c read is the chain's result) but not inside one."""
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    torch.manual_seed(0)
    net = caffe.Net(text_format.Parse(FUSED_NET, caffe_pb2.NetParameter()), caffe.TRAIN)
    net.blobs["x"].data[...] = np.random.RandomState(0).randn(4, 3, 2, 2)
    assert {net.module.nodes[i].name for i in net.module._train_plan(True)[0]} == {"sum", "bn"}  # (+ relu, scale)
    wc = net.params["c"][0].data.reshape(2, 3).astype(np.float64)
    net.forward()
    out = net.backward(start="loss", end="c")
    # d loss / d s (the version c read) = 1 @ wc per pixel: no ReLU mask, no BatchNorm
    np.testing.assert_allclose(out["s"], np.broadcast_to(wc.sum(0)[None, :, None, None], (4, 3, 2, 2)),
                               rtol=1e-5)
    # from c down to the BatchNorm chain: its bottom is the Eltwise -> ReLU chain's result (masked by the ReLU's
    # forward, not by its backward), the same as the unfused net gives
    gc = np.random.RandomState(1).randn(4, 2, 2, 2)
    runs = []
    for fuse in (True, False):
        net.module.fuse = fuse
        net.forward()
        net.blobs["c"].diff[...] = gc
        runs.append(net.backward(start="c", end="bn")["s"].copy())
    assert np.abs(runs[1]).max() > 0.1
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)
    net.module.fuse = True
    net.forward()
    with pytest.raises(NetspecError, match="'bn' to 'scale' ran as one fused module.*start at 'scale', end at 'bn'.*fuse = False"):
        net.backward(start="bn")
    net.module.fuse = False
    net.forward()
    net.blobs["s"].diff[...] = 1.0
    net.clear_param_diffs()
    net.backward(start="bn", end="relu")   # unfused: any layer can start or end it
    assert net.blobs["s"].diff.any() and not net.params["scale"][0].diff.any()  # (Scale is outside the range)
