"""InnerProduct and Embed against closed forms."""
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

FILL = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def build(text, *shapes, phase=caffe_pb2.TEST):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=phase, where="t:1: "))


def ip(param, shape):
    return build(f'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ {param} }}', shape)


@pytest.mark.parametrize("axis,shape,out", [
    (1, (2, 3, 4, 5), (2, 7)),
    (2, (2, 3, 4, 5), (2, 3, 7)),
    (-1, (2, 3, 4, 5), (2, 3, 4, 7)),
    (0, (3, 4), (7,)),
])
def test_axis_flattens_the_trailing_axes(axis, shape, out):
    m = ip(f"num_output: 7 axis: {axis} {FILL}", shape)
    k = shape[axis:]
    assert tuple(m.weight.shape) == (7, int(torch.tensor(k).prod()))
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == out
    lead = shape[:axis % len(shape)]
    torch.testing.assert_close(y, (x.reshape(*lead, -1) @ m.weight.T + m.bias))
    assert infer_top_shapes(m, [shape]) == [out]


def test_transpose_stores_k_by_n():
    m = ip(f"num_output: 3 transpose: true bias_term: false {FILL}", (4, 2, 5))
    assert [tuple(p.shape) for p in m.parameters()] == [(10, 3)]
    x = torch.randn(4, 2, 5, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, x.reshape(4, 10) @ m.weight)
    g = torch.randn(4, 3)
    y.backward(g)
    torch.testing.assert_close(m.weight.grad, x.detach().reshape(4, 10).T @ g)
    torch.testing.assert_close(x.grad, (g @ m.weight.detach().T).reshape(4, 2, 5))


def test_default_fillers_are_zero():
    m = ip("num_output: 3", (2, 4))
    assert all(torch.count_nonzero(p) == 0 for p in m.parameters())


@pytest.mark.parametrize("param,msg", [("num_output: 0", "positive"), ("num_output: 2 axis: 3", "out of range")])
def test_bad_parameters(param, msg):
    with pytest.raises(LayerError, match=msg):
        ip(param, (2, 3, 4))


def embed(param, shape):
    return build(f'name: "e" type: "Embed" bottom: "x" top: "y" embed_param {{ {param} }}', shape)


def test_embed_lookup_truncates_and_accumulates_gradients():
    m = embed(f"input_dim: 5 num_output: 3 {FILL}", (2, 3))
    assert [tuple(p.shape) for p in m.parameters()] == [(5, 3), (3,)]
    x = torch.tensor([[0.0, 4.0, 2.9], [1.0, 4.0, 0.0]])  # an index input needing a gradient: test_caffe_refusals
    y = m(x)
    assert y.shape == (2, 3, 3)
    idx = torch.tensor([[0, 4, 2], [1, 4, 0]])  # static_cast<int>: 2.9 -> 2
    torch.testing.assert_close(y, m.weight[idx] + m.bias)
    g = torch.randn(2, 3, 3)
    y.backward(g)
    expect = torch.zeros(5, 3).index_add_(0, idx.flatten(), g.reshape(6, 3))
    torch.testing.assert_close(m.weight.grad, expect)
    torch.testing.assert_close(m.bias.grad, g.reshape(6, 3).sum(0))
    assert x.grad is None


def test_embed_without_bias_and_bad_sizes():
    m = embed("input_dim: 4 num_output: 2 bias_term: false", (3,))
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    with pytest.raises(LayerError, match="positive"):
        embed("num_output: 2", (3,))
