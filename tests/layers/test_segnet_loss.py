"""SoftmaxWithLoss with SegNet's / ENet's weight_by_label_freqs + class_weighting (caffe-segnet
src/caffe/layers/softmax_loss_layer.cpp): loss = sum over valid positions of -log(p_label) * w_label, divided
by the number of valid positions; gradient (p - onehot) * w_label / count."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

W = [0.2595, 0.1826, 4.5640]


def build(loss_param, shape=(2, 3, 4, 5)):
    lp = text_format.Parse(f'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
                           f'loss_param {{ {loss_param} }}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [shape, (shape[0], 1) + shape[2:]], BuildContext(phase=caffe_pb2.TRAIN))


@pytest.mark.parametrize("ignore", [None, 3])
def test_weighted_loss_and_gradient_against_the_fork(ignore):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    label = rng.integers(0, 3 if ignore is None else 4, (2, 1, 4, 5))
    fields = "weight_by_label_freqs: true " + " ".join(f"class_weighting: {w}" for w in W)
    if ignore is not None:
        fields += f" ignore_label: {ignore}"
    m = build(fields)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    loss = m(xt, torch.tensor(label, dtype=torch.float32))
    loss.backward()
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    lab = label[:, 0]
    valid = lab != ignore
    safe = np.where(valid, lab, 0)
    w = np.float32(W)[safe] * valid
    nll = -np.log(np.take_along_axis(p, safe[:, None], 1)[:, 0])
    count = valid.sum()
    np.testing.assert_allclose(loss.item(), (nll * w).sum() / count, rtol=1e-5)
    onehot = np.eye(3)[safe].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(xt.grad.numpy(), (p - onehot) * w[:, None] / count, rtol=1e-4, atol=1e-6)


def test_needs_one_weight_per_class():
    with pytest.raises(LayerError, match="one class_weighting per class"):
        build("weight_by_label_freqs: true class_weighting: 1")
