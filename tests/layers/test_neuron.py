"""Neuron layers against closed forms of Caffe's forward and backward."""
import math

import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, shape=(2, 3, 4, 5), phase=caffe_pb2.TEST):
    lp = text_format.Parse(f'name: "n" bottom: "x" top: "y" {text}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(shape)], BuildContext(phase=phase, where="t:1: "))


def run(m, x):
    """(forward, gradient for a random top diff, that top diff)."""
    x = x.clone().requires_grad_(True)
    y = m(x)
    g = torch.randn(y.shape)
    y.backward(g)
    return y.detach(), x.grad, g


def check(text, fwd, dfdx, x=None):
    x = torch.randn(2, 3, 4, 5) if x is None else x
    y, dx, g = run(build(text, x.shape), x)
    torch.testing.assert_close(y, fwd(x))
    torch.testing.assert_close(dx, g * dfdx(x))


def test_relu():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0])
    check('type: "ReLU"', lambda x: x.clamp(min=0), lambda x: (x > 0).float(), x)
    check('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: torch.where(x > 0, x, 0.1 * x),
          lambda x: torch.where(x > 0, 1.0, 0.1))


def test_prelu_channelwise_and_shared():
    m = build('type: "PReLU"')
    assert [tuple(p.shape) for p in m.parameters()] == [(3,)]
    assert torch.equal(m.weight, torch.full((3,), 0.25))
    m = build('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }')
    assert m.weight.shape == () and m.weight.item() == pytest.approx(0.3)  # Caffe's blob has 0 axes
    x = torch.randn(2, 3, 4, 5)
    y, dx, g = run(m, x)
    torch.testing.assert_close(y, torch.where(x > 0, x, 0.3 * x))
    torch.testing.assert_close(dx, g * torch.where(x > 0, 1.0, 0.3))
    torch.testing.assert_close(m.weight.grad, (g * x * (x <= 0)).sum())


def test_prelu_channel_slopes_get_summed_gradients():
    m = build('type: "PReLU" prelu_param { filler { type: "uniform" min: 0 max: 1 } }')
    x = torch.randn(2, 3, 4, 5)
    y, dx, g = run(m, x)
    a = m.weight.detach()[None, :, None, None]
    torch.testing.assert_close(y, torch.where(x > 0, x, a * x))
    torch.testing.assert_close(m.weight.grad, (g * x * (x <= 0)).sum((0, 2, 3)))
    with pytest.raises(LayerError, match="2 axes"):
        build('type: "PReLU"', (4,))


def test_elu_sigmoid_tanh_absval():
    check('type: "ELU" elu_param { alpha: 0.5 }', lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1)),
          lambda x: torch.where(x > 0, 1.0, 0.5 * torch.exp(x)))
    check('type: "Sigmoid"', torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)))
    check('type: "TanH"', torch.tanh, lambda x: 1 - torch.tanh(x) ** 2)
    check('type: "AbsVal"', torch.abs, torch.sign, torch.tensor([-1.5, 0.0, 2.0]))


def test_bnll_clamps_exp_in_backward():
    x = torch.tensor([60.0, -60.0, 49.5, 51.0, 100.0, -3.0, 0.0])
    y, dx, g = run(build('type: "BNLL"'), x)
    ref = torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))
    torch.testing.assert_close(y, ref)
    e = torch.exp(x.clamp(max=50))
    torch.testing.assert_close(dx, g * e / (e + 1))
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("power,scale,shift", [(2, 0.5, 1), (0.5, 1, 3), (1, -2, 0.5), (3, 2, 0), (-1, 1, 2)])
def test_power(power, scale, shift):
    x = torch.rand(2, 3, 4, 5) + 0.5
    check(f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}',
          lambda x: (shift + scale * x) ** power, lambda x: power * scale * (shift + scale * x) ** (power - 1), x)


def test_power_constant_cases_have_zero_gradient():
    x = torch.randn(4)
    y, dx, _ = run(build('type: "Power" power_param { power: 0 scale: 3 }'), x)
    assert torch.equal(y, torch.ones(4)) and torch.equal(dx, torch.zeros(4))
    y, dx, _ = run(build('type: "Power" power_param { power: 2 scale: 0 shift: 3 }'), x)
    assert torch.equal(y, torch.full((4,), 9.0)) and torch.equal(dx, torch.zeros(4))


def test_exp_and_log():
    check('type: "Exp" exp_param { scale: 0.5 shift: 0.2 }', lambda x: torch.exp(0.2 + 0.5 * x),
          lambda x: 0.5 * torch.exp(0.2 + 0.5 * x))
    check('type: "Exp" exp_param { base: 2 shift: 1 }', lambda x: 2 ** (1 + x), lambda x: math.log(2) * 2 ** (1 + x))
    x = torch.rand(2, 3, 4, 5) + 0.1
    check('type: "Log" log_param { scale: 2 shift: 3 }', lambda x: torch.log(3 + 2 * x), lambda x: 2 / (3 + 2 * x), x)
    check('type: "Log" log_param { base: 10 }', torch.log10, lambda x: 1 / (x * math.log(10)), x)
    for t in ('Exp', 'Log'):
        with pytest.raises(LayerError, match="strictly positive"):
            build(f'type: "{t}" {t.lower()}_param {{ base: 0 }}')


def test_threshold_has_no_gradient():
    m = build('type: "Threshold" threshold_param { threshold: 0.3 }')
    x = torch.tensor([0.2, 0.3, 0.31, -1.0], requires_grad=True)
    y = m(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 0.0] and not y.requires_grad


def test_clip_gradient_is_inclusive():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.8, 2.0])
    check('type: "Clip" clip_param { min: -0.5 max: 0.8 }', lambda x: x.clamp(-0.5, 0.8),
          lambda x: ((x >= -0.5) & (x <= 0.8)).float(), x)
    with pytest.raises(LayerError, match="must not exceed"):
        build('type: "Clip" clip_param { min: 1 max: 0 }')


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_swish(beta):
    s = lambda x: torch.sigmoid(beta * x)  # noqa: E731
    check(f'type: "Swish" swish_param {{ beta: {beta} }}', lambda x: x * s(x),
          lambda x: beta * x * s(x) + s(x) * (1 - beta * x * s(x)))


def test_dropout_phases():
    x = torch.randn(1000)
    m = build('type: "Dropout" dropout_param { dropout_ratio: 0.3 }')
    assert m(x) is x
    m = build('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', phase=caffe_pb2.TRAIN)
    m.eval()  # the phase decides, not nn.Module.training
    y, dx, g = run(m, x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    torch.testing.assert_close(dx, g * kept / 0.7)
    assert 0.6 < kept.float().mean() < 0.8
    with pytest.raises(LayerError, match=r"\[0, 1\)"):
        build('type: "Dropout" dropout_param { dropout_ratio: 1 }')
