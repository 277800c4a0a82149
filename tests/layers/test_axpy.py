"""SENet's Axpy against its Forward_cpu / Backward_cpu formulas, and the released SE-ResNet-50 / SE-BN-Inception
deploy nets (hujie-frank/SENet) built and run."""
from pathlib import Path

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

DATA = Path(__file__).resolve().parents[1] / "data" / "forks" / "senet"


def build(*shapes):
    lp = text_format.Parse('name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"',
                           caffe_pb2.LayerParameter())
    return LAYERS.get("Axpy").builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


@pytest.mark.parametrize("ashape", [(2, 3, 1, 1), (2, 3)])
def test_forward_and_backward_formulas(ashape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(ashape)
    x, y = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    m = build(ashape, x.shape, y.shape)
    ts = [torch.tensor(v, requires_grad=True) for v in (a, x, y)]
    z = m(*ts)
    a2 = a.reshape(2, 3)
    ref = np.empty_like(x)
    for n in range(2):
        for c in range(3):
            ref[n, c] = y[n, c] + a2[n, c] * x[n, c]  # caffe_copy(y) then caffe_axpy(a[n, c], x[n, c])
    np.testing.assert_allclose(z.detach().numpy(), ref, rtol=1e-12)
    g = rng.standard_normal(z.shape)
    z.backward(torch.tensor(g))
    # Backward_cpu: a_diff = sum_hw top_diff * x; x_diff = a * top_diff; y_diff = top_diff
    np.testing.assert_allclose(ts[0].grad.numpy().reshape(2, 3), (g * x).sum((2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ts[1].grad.numpy(), a2[:, :, None, None] * g, rtol=1e-12)
    np.testing.assert_allclose(ts[2].grad.numpy(), g, rtol=1e-12)
    small = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in (ashape, (2, 3, 2, 2), (2, 3, 2, 2))]
    assert torch.autograd.gradcheck(m, tuple(small))


@pytest.mark.parametrize("shapes,msg", [
    ([(2, 4, 1, 1), (2, 3, 4, 4), (2, 3, 4, 4)], r"\(N, C\)"),
    ([(2, 3, 2, 1), (2, 3, 4, 4), (2, 3, 4, 4)], r"\(N, C, 1, 1\)"),
    ([(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 4, 5)], "same shape"),
])
def test_bad_shapes(shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build(*shapes)


def released(name):
    net = Net(str(DATA / name), netspec.TEST)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for blobs in net.params.values():
            for b in blobs:
                if b.data.ndim > 1:
                    b.data[...] = rng.standard_normal(b.shape, np.float32) * (b.data[0].size ** -0.5)
                elif len(blobs) == 3:  # BatchNorm: mean, variance, scale factor
                    b.data[...] = 1.0
    x = rng.standard_normal((1, 3, 224, 224), np.float32)
    return net, net.forward(data=x)


@pytest.mark.slow
def test_se_resnet_50_runs_as_released():
    net, out = released("SE-ResNet-50.prototxt")  # 16 Axpy layers; ~3 s on 2 CPU cores
    prob = out["prob"]
    assert prob.shape == (1, 1000) and np.all(np.isfinite(prob))
    np.testing.assert_allclose(prob.sum(), 1, rtol=1e-5)
    assert net.blobs["conv2_1"].shape == (1, 256, 56, 56)


@pytest.mark.slow
def test_se_bn_inception_runs_as_released():
    _, out = released("SE-BN-Inception.prototxt")  # SE blocks via Reshape + 2-bottom Scale, no Axpy
    assert out["prob"].shape == (1, 1000) and np.all(np.isfinite(out["prob"]))


@pytest.mark.slow
def test_se_resnet_50_builds():  # ~1.5 s: 25 M parameters filled
    net = Net(str(DATA / "SE-ResNet-50.prototxt"), netspec.TEST)
    assert sum(layer.type == "Axpy" for layer in net.layers) == 16
    assert net.blobs["prob"].shape == (1, 1000)
