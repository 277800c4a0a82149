"""Eltwise, Scale, Bias, Reduction, Softmax, ArgMax: closed forms, Caffe's tie rules, errors."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, *shapes):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.bottom:
        lp.bottom.extend(f"b{i}" for i in range(len(shapes)))
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


def leaves(n, *shape):
    return [torch.randn(*shape, requires_grad=True) for _ in range(n)]


def test_eltwise_sum_coeff():
    a, b = leaves(2, 2, 3)
    y = build('type: "Eltwise" eltwise_param { coeff: 0.5 coeff: -2 }', (2, 3), (2, 3))(a, b)
    assert torch.allclose(y, 0.5 * a - 2 * b)
    y.sum().backward()
    assert torch.allclose(b.grad, torch.full((2, 3), -2.0))


def test_eltwise_prod_stable_and_unstable_grad():
    a = torch.tensor([2.0, 0.0], requires_grad=True)
    b = torch.tensor([3.0, 5.0], requires_grad=True)
    build('type: "Eltwise" eltwise_param { operation: PROD }', (2,), (2,))(a, b).sum().backward()
    assert a.grad.tolist() == [3.0, 5.0] and b.grad.tolist() == [2.0, 0.0]
    a.grad = b.grad = None
    m = build('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }', (2,), (2,))
    m(a, b).sum().backward()
    assert a.grad[0] == 3.0 and torch.isnan(a.grad[1])  # Caffe's top / bottom: 0/0 where a == 0
    assert b.grad.tolist() == [2.0, 0.0]


def test_eltwise_max_tie_routing():
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom needs to be strictly greater.
    a = torch.tensor([1.0, 2.0, 0.0, 5.0], requires_grad=True)
    b = torch.tensor([1.0, 1.0, 3.0, 5.0], requires_grad=True)
    c = torch.tensor([0.0, 2.0, 3.0, 6.0], requires_grad=True)
    y = build('type: "Eltwise" eltwise_param { operation: MAX }', (4,), (4,), (4,))(a, b, c)
    assert y.tolist() == [1.0, 2.0, 3.0, 6.0]
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert a.grad.tolist() == [0, 2, 0, 0] and b.grad.tolist() == [1, 0, 3, 0] and c.grad.tolist() == [0, 0, 0, 4]


def test_eltwise_errors():
    with pytest.raises(LayerError, match="one per bottom"):
        build('type: "Eltwise" eltwise_param { coeff: 1 }', (2,), (2,))
    with pytest.raises(LayerError, match="only allowed for operation SUM"):
        build('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', (2,), (2,))
    with pytest.raises(LayerError, match=r"'b1' is \(3,\)"):
        build('name: "e" type: "Eltwise"', (2,), (3,))


def test_scale_learned_default_filler_and_bias():
    m = build('type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 0.5 } }',
              (2, 3, 4))
    assert [tuple(p.shape) for p in m.parameters()] == [(3,), (3,)]
    assert torch.equal(m.weight, torch.ones(3)) and torch.equal(m.bias, torch.full((3,), 0.5))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.randn(2, 3, 4)
    assert torch.allclose(m(x), x * torch.tensor([1.0, 2, 3])[:, None] + 0.5)
    m = build('type: "Scale" scale_param { axis: 0 num_axes: -1 filler { type: "constant" value: 3 } }', (2, 3))
    assert m.weight.shape == (2, 3) and torch.equal(m.weight, torch.full((2, 3), 3.0)) and m.bias is None
    m = build('type: "Scale" scale_param { num_axes: 0 }', (2, 3, 4))
    assert m.weight.shape == () and torch.equal(m(x), x)


def test_scale_two_bottoms_broadcast_and_grad():
    x, s = torch.randn(2, 3, 4, 5, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    m = build('type: "Scale" scale_param { bias_term: true }', x.shape, s.shape)
    assert [tuple(p.shape) for p in m.parameters()] == [(3, 4)]  # only the bias is learned
    y = m(x, s)
    assert torch.allclose(y, x * s[None, :, :, None])
    y.sum().backward()
    assert torch.allclose(s.grad, x.detach().sum((0, 3)))
    with pytest.raises(LayerError, match="does not match"):
        build('name: "sc" type: "Scale" scale_param { axis: 2 }', x.shape, s.shape)
    with pytest.raises(LayerError, match="extend past"):
        build('type: "Scale" scale_param { axis: 2 num_axes: 3 }', x.shape)


def test_bias():
    x = torch.randn(2, 3, 4)
    m = build('type: "Bias"', x.shape)
    assert m.bias.shape == (3,) and not m.bias.any()
    b = torch.randn(3, 4)
    assert torch.allclose(build('type: "Bias"', x.shape, b.shape)(x, b), x + b)


@pytest.mark.parametrize("op,ref", [
    ("SUM", lambda v: v.sum(-1)), ("ASUM", lambda v: np.abs(v).sum(-1)),
    ("SUMSQ", lambda v: (v * v).sum(-1)), ("MEAN", lambda v: v.mean(-1))])
def test_reduction(op, ref):
    x = torch.randn(2, 3, 4, requires_grad=True)
    y = build(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 3 }}', x.shape)(x)
    assert y.shape == (2,)
    np.testing.assert_allclose(y.detach().numpy(), 3 * ref(x.detach().numpy().reshape(2, -1)), rtol=1e-5)
    y = build(f'type: "Reduction" reduction_param {{ operation: {op} }}', x.shape)(x)
    assert y.shape == ()


def test_reduction_asum_grad_sign():
    x = torch.tensor([[-2.0, 0.0, 3.0]], requires_grad=True)
    build('type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 2 }', x.shape)(x).sum().backward()
    assert x.grad.tolist() == [[-2.0, 0.0, 2.0]]


def test_softmax():
    x = torch.randn(2, 3, 4)
    assert torch.allclose(build('type: "Softmax" softmax_param { axis: -1 }', x.shape)(x), torch.softmax(x, 2))


def test_argmax_ties_take_the_higher_index():
    x = torch.tensor([[[3.0, 1.0, 3.0, 2.0, 3.0]]])  # 1 x 1 x 5
    y = build('type: "ArgMax" argmax_param { top_k: 4 }', x.shape)(x)
    assert y.shape == (1, 1, 4) and y.flatten().tolist() == [4, 2, 0, 3]
    y = build('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', x.shape)(x)
    assert y.tolist() == [[[4.0, 2.0], [3.0, 3.0]]]
    x = torch.tensor([[[1.0], [5.0], [5.0]], [[7.0], [0.0], [7.0]]])  # 2 x 3 x 1, axis 1
    y = build('type: "ArgMax" argmax_param { axis: 1 }', x.shape)(x)
    assert y.shape == (2, 1, 1) and y.flatten().tolist() == [2, 2]
    y = build('type: "ArgMax" argmax_param { axis: 1 top_k: 2 out_max_val: true }', x.shape)(x)
    assert y.flatten().tolist() == [5, 5, 7, 7]


def test_argmax_shapes_and_errors():
    x = torch.randn(2, 4, 2, 3)
    assert build('type: "ArgMax" argmax_param { top_k: 3 }', x.shape)(x).shape == (2, 1, 3, 1)
    assert build('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', x.shape)(x).shape == (2, 2, 3, 1)
    with pytest.raises(LayerError, match="top_k 5 exceeds"):
        build('type: "ArgMax" argmax_param { axis: 1 top_k: 5 }', x.shape)
