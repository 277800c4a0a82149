"""SmoothL1Loss (caffe-fast-rcnn) against transcriptions of its CUDA SmoothL1Forward / SmoothL1Backward
(the fork's CPU code is NOT_IMPLEMENTED); OpenCV has no such layer."""
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


def build(param, *shapes):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    lp = text_format.Parse(f'name: "l1" type: "SmoothL1Loss" {bottoms} top: "loss" {param}',
                           caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TRAIN))


def fork(a, b, w_in, w_out, sigma, top_diff=1.0):
    """Forward_gpu and Backward_gpu, element by element: (loss, diff of a, diff of b)."""
    s2 = sigma * sigma
    d = (a - b) * (w_in if w_in is not None else 1)
    err = np.where(np.abs(d) < 1 / s2, 0.5 * d * d * s2, np.abs(d) - 0.5 / s2)
    if w_out is not None:
        err = err * w_out
    loss = err.sum() / a.shape[0]
    g = np.where(np.abs(d) < 1 / s2, s2 * d, np.sign(d))
    diffs = []
    for sign in (1, -1):
        x = sign * top_diff / a.shape[0] * g
        if w_in is not None:
            x = x * w_in * w_out
        diffs.append(x)
    return loss, diffs[0], diffs[1]


@pytest.mark.parametrize("sigma,weights", [(1.0, False), (3.0, True), (0.5, True)])
def test_forward_and_backward_as_the_fork(sigma, weights):
    rng = np.random.default_rng(int(sigma * 10))
    shape = (3, 8, 2, 2)
    a, b = rng.standard_normal(shape) * 0.7, rng.standard_normal(shape) * 0.7
    w_in = (rng.random(shape) > 0.3).astype(float) if weights else None
    w_out = rng.random(shape) if weights else None
    m = build(f"smooth_l1_loss_param {{ sigma: {sigma} }}", *([shape] * (4 if weights else 2)))
    ts = [torch.tensor(v, requires_grad=True) for v in (a, b, w_in, w_out) if v is not None]
    loss = m(*ts)
    ref, da, db = fork(a, b, w_in, w_out, np.float32(sigma).item())
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-6)
    (loss * 2.5).backward()
    np.testing.assert_allclose(ts[0].grad.numpy(), 2.5 * da, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ts[1].grad.numpy(), 2.5 * db, rtol=1e-5, atol=1e-12)
    for w in ts[2:]:
        assert w.grad is None  # the fork's Backward writes bottoms 0 and 1 only


def test_2d_predictions_with_4d_targets():
    m = build("", (5, 84), (5, 84, 1, 1))
    assert m(torch.zeros(5, 84), torch.ones(5, 84, 1, 1)).item() == pytest.approx(84 * 0.5)


@pytest.mark.parametrize("shapes,msg", [
    ([(2, 4), (2, 4), (2, 4)], "both inside and outside"),
    ([(2, 4), (3, 4)], "num, channels"),
    ([(2, 4, 3, 3), (2, 4, 3, 3), (2, 4, 3, 3), (2, 4, 3, 2)], "bottom 3"),
])
def test_bad_bottoms(shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build("", *shapes)


def test_released_end2end_train_net_needs_only_the_forks_python_modules():
    """py-faster-rcnn's ZF end2end train.prototxt parses (smooth_l1_loss_param, roi_pooling_param,
    dropout); what is left are its data / target Python modules, named with how to provide them."""
    src = Path(__file__).resolve().parents[1] / "data" / "forks" / "faster_rcnn" / "ZF_train.prototxt"
    with pytest.raises(LayerError, match="cannot import module 'roi_data_layer.layer'.*PYTHONPATH"):
        Net(str(src), netspec.TRAIN)
