"""Upsample (SegNet / ENet max-unpooling) against a transcription of upsample_layer.cpp's loops."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(param, shape=(1, 2, 3, 4), mask_shape=None):
    lp = text_format.Parse(f'name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" '
                           f'upsample_param {{ {param} }}', caffe_pb2.LayerParameter())
    return LAYERS.get("Upsample").builder(lp, [shape, mask_shape or shape], BuildContext(phase=caffe_pb2.TEST))


def fork_forward(x, mask, oh, ow):
    """Forward_cpu: top zero, then top[mask[i]] = bottom[i] for i in plane order (later writes win)."""
    n, c, h, w = x.shape
    top = np.zeros((n, c, oh * ow), np.float32)
    for a in range(n):
        for b in range(c):
            for i in range(h * w):
                top[a, b, int(mask[a, b].flat[i])] = x[a, b].flat[i]
    return top.reshape(n, c, oh, ow)


def fork_backward(g, mask):
    """Backward_cpu: bottom_diff[i] = top_diff[mask[i]]."""
    n, c, h, w = mask.shape
    out = np.zeros(mask.shape, np.float32)
    for a in range(n):
        for b in range(c):
            for i in range(h * w):
                out[a, b].flat[i] = g[a, b].flat[int(mask[a, b].flat[i])]
    return out


@pytest.mark.parametrize("param,out", [
    ("scale: 2", (6, 8)),
    ("scale_h: 2 scale_w: 3", (6, 12)),
    ("scale: 2 pad_out_h: true", (5, 8)),
    ("scale: 2 upsample_h: 7 upsample_w: 9", (7, 9)),   # SegNet's prototxts: upsample_h/w beat scale
])
def test_forward_backward_against_the_fork(param, out):
    rng = np.random.default_rng(1)
    m = build(param)
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    mask = np.stack([rng.permutation(out[0] * out[1])[:12].reshape(3, 4) for _ in range(2)])[None].astype(np.float32)
    mask[0, 1, 2, 3] = mask[0, 1, 0, 0]  # a collision: the later value wins, both get the gradient
    xt = torch.tensor(x, requires_grad=True)
    y = m(xt, torch.tensor(mask))
    assert y.shape == (1, 2) + out and m.top_shapes([(1, 2, 3, 4)] * 2) == [(1, 2) + out]
    np.testing.assert_array_equal(y.detach().numpy(), fork_forward(x, mask, *out))
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(torch.tensor(g))
    np.testing.assert_array_equal(xt.grad.numpy(), fork_backward(g, mask))


def test_unpools_a_pooling_mask_in_a_net():
    """Pooling's 2nd top feeds Upsample: the maxima return to their places, zeros elsewhere."""
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 8 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }\n')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), netspec.TEST)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 8)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    u = net.blobs["u"].data
    win = x.reshape(2, 3, 3, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 4, 4)
    keep = win == win.max(axis=-1, keepdims=True)
    ref = np.where(keep, win, 0).reshape(2, 3, 3, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 6, 8)
    np.testing.assert_array_equal(u, ref)


def test_gradcheck():
    m = build("scale: 2", shape=(1, 2, 2, 2))
    mask = torch.tensor([[[[0, 3], [9, 14]], [[5, 5], [8, 15]]]], dtype=torch.float64)
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    # without collisions the fork's gather is the true gradient
    torch.autograd.gradcheck(lambda t: m(t, mask[:, :1].expand(1, 2, 2, 2)), (x,))


def test_mask_out_of_range_is_an_error():
    m = build("scale: 2", shape=(1, 1, 2, 2))
    with pytest.raises(LayerError, match="outside the 4x4 top"):
        m(torch.zeros(1, 1, 2, 2), torch.tensor([[[[0, 1], [2, 16]]]], dtype=torch.float32))


@pytest.mark.parametrize("param,shapes,msg", [
    ("scale: 2 scale_h: 2 scale_w: 2", None, "scale OR scale_h"),
    ("scale: 1", None, "must be > 1"),
    ("scale: 3 pad_out_w: true", None, "requires scale_w == 2"),
    ("upsample_h: 1 upsample_w: 4", None, "must be > 1"),
    ("scale: 2", (1, 2, 3, 5), "differs"),
])
def test_bad_parameters(param, shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build(param, mask_shape=shapes)


@pytest.mark.parametrize("shape,upsample,onnx_out", [
    ((1, 3, 4, 6), "scale: 2", None),  # OpenCV's MaxUnpool takes batch 1 only
    ((1, 2, 5, 7), "upsample_h: 5 upsample_w: 7", (1, 2, 5, 7)),  # odd sizes: ceil pooling, explicit size
])
def test_opencv_second_opinion(shape, upsample, onnx_out, tmp_path):
    """OpenCV's dnn has no Caffe ``Upsample``, but runs ONNX MaxPool (with indices) + MaxUnpool: the same
    net (pool, scale the pooled values by 3 and add 1, unpool by the mask) in both agrees."""
    onnx = pytest.importorskip("onnx")
    cv2 = pytest.importorskip("cv2")
    from onnx import TensorProto, helper
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("Mul", ["p", "three"], ["p3"]), helper.make_node("Add", ["p3", "one"], ["q"]),
             helper.make_node("MaxUnpool", ["q", "i"] + (["shape"] if onnx_out else []), ["y"],
                              kernel_shape=[2, 2], strides=[2, 2])]
    inits = [helper.make_tensor("three", TensorProto.FLOAT, [], [3.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    if onnx_out:
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [4], list(onnx_out)))
    graph = helper.make_graph(nodes, "unpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(tmp_path / "u.onnx"))
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    cv = cv2.dnn.readNetFromONNX(str(tmp_path / "u.onnx"))
    cv.setInput(x)
    want = cv.forward()
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "s" type: "Power" bottom: "p" top: "q" power_param { scale: 3 shift: 1 } }\n'
            f'layer {{ name: "u" type: "Upsample" bottom: "q" bottom: "m" top: "y" upsample_param {{ {upsample} }} }}\n')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), netspec.TEST)
    net.blobs["x"].data[...] = x
    got = net.forward()["y"]
    n, c, h, w = got.shape
    # OpenCV ignores MaxUnpool's output_shape (its top stays 2H x 2W of the pooled size) and writes the same
    # per-plane flat index h * W + w there: its plane's first H * W values are the H x W top.
    flat = want.reshape(n, c, -1)
    np.testing.assert_allclose(got.reshape(n, c, -1), flat[:, :, :h * w], rtol=1e-6, atol=0)
    assert not flat[:, :, h * w:].any() and np.count_nonzero(got) == np.count_nonzero(want)
