"""Convolution, Deconvolution and Im2col against torch.nn.functional and Caffe's shape rules."""
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, *shapes, phase=caffe_pb2.TEST):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=phase, where="t:1: "))


def conv(param, *shapes, kind="Convolution", bottoms=1):
    io = " ".join(f'bottom: "x{i}" top: "y{i}"' for i in range(bottoms))
    return build(f'name: "c" type: "{kind}" {io} convolution_param {{ {param} }}', *shapes)


GAUSS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "uniform" min: -1 max: 1 }'


def test_conv2d_asymmetric_matches_functional():
    m = conv(f"num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2 "
             f"group: 2 {GAUSS}", (2, 4, 9, 8))
    assert [tuple(p.shape) for p in m.parameters()] == [(6, 2, 3, 2), (6,)]
    x = torch.randn(2, 4, 9, 8)
    ref = F.conv2d(x, m.weight, m.bias, (2, 1), (1, 0), 2, 2)
    torch.testing.assert_close(m(x), ref)
    # out = (in + 2*pad - (dilation*(k-1)+1)) // stride + 1
    assert ref.shape == (2, 6, (9 + 2 - 5) // 2 + 1, (8 - 3) // 1 + 1)
    assert infer_top_shapes(m, [(2, 4, 9, 8)]) == [tuple(ref.shape)]


def test_default_fillers_are_constant_zero_and_bias_term_false_drops_the_blob():
    m = conv("num_output: 3 kernel_size: 1", (1, 2, 3, 3))
    assert all(torch.count_nonzero(p) == 0 for p in m.parameters())
    m = conv("num_output: 3 kernel_size: 1 bias_term: false", (1, 2, 3, 3))
    assert [n for n, _ in m.named_parameters()] == ["weight"]


@pytest.mark.parametrize("shape,param,fn", [
    ((2, 3, 11), "kernel_size: 3 stride: 2 pad: 1", F.conv1d),
    ((2, 3, 5, 6, 7), "kernel_size: 3 kernel_size: 1 kernel_size: 2 pad: 1 pad: 0 pad: 1 stride: 1 stride: 2 stride: 1 "
                      "dilation: 2 dilation: 1 dilation: 1", F.conv3d),
])
def test_1d_and_3d(shape, param, fn):
    m = conv(f"num_output: 4 {param} {GAUSS}", shape)
    x = torch.randn(shape)
    n = len(shape) - 2
    rep = lambda v: tuple(v) * n if len(v) == 1 else tuple(v)  # noqa: E731
    lp = text_format.Parse(f"{param}", caffe_pb2.ConvolutionParameter())
    ref = fn(x, m.weight, m.bias, rep(lp.stride), rep(lp.pad), rep(lp.dilation) if lp.dilation else 1)
    torch.testing.assert_close(m(x), ref)


def test_axis_treats_leading_axes_as_batch():
    m = conv(f"num_output: 4 kernel_size: 3 axis: 2 {GAUSS}", (2, 3, 5, 6, 7))
    x = torch.randn(2, 3, 5, 6, 7)
    ref = F.conv2d(x.reshape(6, 5, 6, 7), m.weight, m.bias).reshape(2, 3, 4, 4, 5)
    torch.testing.assert_close(m(x), ref)
    m = conv(f"num_output: 4 kernel_size: 3 axis: -3 {GAUSS}", (5, 6, 7))  # axis 0: no batch axis at all
    x = torch.randn(5, 6, 7)
    torch.testing.assert_close(m(x), F.conv2d(x[None], m.weight, m.bias)[0])


def test_multiple_bottoms_share_weights():
    m = conv(f"num_output: 2 kernel_size: 3 {GAUSS}", (1, 3, 5, 5), (1, 3, 5, 5), bottoms=2)
    a, b = torch.randn(2, 1, 3, 5, 5)
    ya, yb = m(a, b)
    torch.testing.assert_close(yb, F.conv2d(b, m.weight, m.bias))
    with pytest.raises(LayerError, match="same shape"):
        conv("num_output: 2 kernel_size: 3", (1, 3, 5, 5), (1, 3, 6, 5), bottoms=2)


def test_deconvolution_layout_and_size():
    m = conv(f"num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 {GAUSS}", (2, 4, 5, 7), kind="Deconvolution")
    assert tuple(m.weight.shape) == (4, 3, 4, 4)  # (C_in, num_output/group, k, k)
    x = torch.randn(2, 4, 5, 7)
    y = m(x)
    torch.testing.assert_close(y, F.conv_transpose2d(x, m.weight, m.bias, 2, 1, groups=2))
    # out = stride*(in-1) + dilation*(k-1) + 1 - 2*pad
    assert y.shape == (2, 6, 2 * 4 + 4 - 2, 2 * 6 + 4 - 2)


def test_deconvolution_bilinear_filler_depthwise():
    m = conv('num_output: 3 group: 3 kernel_size: 4 stride: 2 bias_term: false weight_filler { type: "bilinear" }',
             (1, 3, 4, 4), kind="Deconvolution")
    y = m(torch.ones(1, 3, 4, 4))
    assert y.shape == (1, 3, 10, 10)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones(1, 3, 6, 6))  # interior of a bilinear upsample of 1s


def test_gradients_match_functional():
    m = conv(f"num_output: 4 kernel_size: 3 pad: 1 {GAUSS}", (2, 3, 6, 6))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    g = torch.randn(2, 4, 6, 6)
    m(x).backward(g)
    x2 = x.detach().clone().requires_grad_(True)
    w, b = m.weight.detach().clone().requires_grad_(True), m.bias.detach().clone().requires_grad_(True)
    F.conv2d(x2, w, b, padding=1).backward(g)
    for a, r in ((x.grad, x2.grad), (m.weight.grad, w.grad), (m.bias.grad, b.grad)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("param,shape,msg", [
    ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 4, 4, 4), "2-D convolution"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 4, 4), "not both"),
    ("num_output: 2", (1, 1, 4, 4), "kernel_size must be given"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3", (1, 1, 4, 4, 4), "once per spatial axis"),
    ("num_output: 2 kernel_h: 3", (1, 1, 4, 4), "positive"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 4, 4), "positive"),
    ("num_output: 2 kernel_size: 3 group: 2", (1, 3, 4, 4), "group 2 must divide"),
    ("num_output: 0 kernel_size: 3", (1, 1, 4, 4), "num_output must be positive"),
    ("num_output: 2 kernel_size: 3 axis: 4", (1, 1, 4, 4), "out of range"),
    ("num_output: 2 kernel_size: 3", (1, 4), "spatial axes"),
])
def test_bad_parameters(param, shape, msg):
    with pytest.raises(LayerError, match=msg):
        conv(param, shape)


def test_tops_must_pair_with_bottoms():
    with pytest.raises(LayerError, match="one top per bottom"):
        build('name: "c" type: "Convolution" bottom: "x" top: "y" top: "z" '
              'convolution_param { num_output: 2 kernel_size: 1 }', (1, 1, 2, 2))


def test_runs_on_other_input_sizes():
    m = conv(f"num_output: 2 kernel_size: 3 stride: 2 {GAUSS}", (1, 3, 8, 8))
    assert m(torch.randn(3, 3, 21, 13)).shape == (3, 2, 10, 6)


def im2col_layer(param, shape):
    return build(f'name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param {{ {param} }}', shape)


def test_im2col_2d_matches_unfold():
    m = im2col_layer("kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 dilation: 2", (2, 3, 9, 8))
    x = torch.randn(2, 3, 9, 8)
    ref = F.unfold(x, (3, 2), dilation=2, padding=1, stride=2)  # (N, C*k*k, L), channel-major like Caffe
    y = m(x)
    assert y.shape == (2, 18, 4, 4)
    torch.testing.assert_close(y.reshape(2, 18, -1), ref, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 3, 10), (1, 2, 5, 6, 7)])
def test_im2col_is_convolution_with_unit_kernels(shape):
    n = len(shape) - 2
    m = im2col_layer("kernel_size: 2 stride: 2 pad: 1 dilation: 2", shape)
    x = torch.randn(shape)
    y = m(x)
    k = 2 ** n
    eye = torch.eye(shape[1] * k).reshape(shape[1] * k, shape[1], *(2,) * n)
    conv = {1: F.conv1d, 3: F.conv3d}[n]
    torch.testing.assert_close(y, conv(x, eye, stride=2, padding=1, dilation=2))
