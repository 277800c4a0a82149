"""Interp (DeepLab / PSPNet bilinear resize) against a transcription of caffe_cpu_interp2."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(param, *shapes):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    lp = text_format.Parse(f'name: "i" type: "Interp" {bottoms} top: "y" interp_param {{ {param} }}',
                           caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


def caffe_interp2(x, y0, x0, h1, w1, h2, w2):
    """caffe_cpu_interp2 on the (h1, w1) region of x at (y0, x0) -> (N, C, h2, w2), float32 arithmetic."""
    out = np.zeros(x.shape[:2] + (h2, w2), np.float32)
    rh = np.float32((h1 - 1) / (h2 - 1)) if h2 > 1 else np.float32(0)
    rw = np.float32((w1 - 1) / (w2 - 1)) if w2 > 1 else np.float32(0)
    for i in range(h2):
        hr = rh * np.float32(i)
        h = int(hr)
        hp = 1 if h < h1 - 1 else 0
        l1 = np.float32(hr - h)
        l0 = np.float32(1) - l1
        for j in range(w2):
            wr = rw * np.float32(j)
            w = int(wr)
            wp = 1 if w < w1 - 1 else 0
            m1 = np.float32(wr - w)
            m0 = np.float32(1) - m1
            p = x[:, :, y0 + h:, x0 + w:]
            out[:, :, i, j] = (l0 * (m0 * p[:, :, 0, 0] + m1 * p[:, :, 0, wp])
                               + l1 * (m0 * p[:, :, hp, 0] + m1 * p[:, :, hp, wp]))
    return out


@pytest.mark.parametrize("param,out", [
    ("zoom_factor: 3", (13, 16)),                   # in + (in - 1) * (zoom - 1)
    ("shrink_factor: 2", (3, 3)),                   # (in - 1) // shrink + 1
    ("shrink_factor: 2 zoom_factor: 3", (7, 7)),    # shrink, then zoom
    ("height: 9 width: 1", (9, 1)),
    ("height: 9 width: 4 shrink_factor: 2 zoom_factor: 2", (9, 4)),  # PSPNet: explicit size beats both
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (5, 7)),              # crop 1 on each side first
])
def test_sizes_and_values(param, out):
    m = build(param, (2, 3, 5, 6))
    x = torch.randn(2, 3, 5, 6)
    y = m(x)
    assert y.shape == (2, 3) + out
    assert infer_top_shapes(m, [(2, 3, 5, 6)]) == [(2, 3) + out]
    crop = 1 if "pad_beg" in param else 0
    ref = caffe_interp2(x.numpy(), crop, crop, 5 - 2 * crop, 6 - 2 * crop, *out)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_second_bottom_gives_the_size_and_no_gradient():
    m = build("", (1, 2, 4, 4), (1, 7, 7, 9))
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    ref = torch.randn(1, 7, 7, 9, requires_grad=True)
    y = m(x, ref)
    assert y.shape == (1, 2, 7, 9)
    y.sum().backward()
    assert ref.grad is None
    torch.testing.assert_close(x.grad.sum(), torch.tensor(2 * 7 * 9.0))  # bilinear weights sum to 1


def test_cropped_border_gets_zero_gradient():
    m = build("zoom_factor: 2 pad_beg: -1 pad_end: 0", (1, 1, 4, 4))
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    m(x).sum().backward()
    assert torch.equal(x.grad[0, 0, 0], torch.zeros(4)) and torch.equal(x.grad[0, 0, :, 0], torch.zeros(4))
    assert (x.grad[0, 0, 1:, 1:] > 0).all()


def test_same_size_is_identity():
    m = build("height: 5 width: 6", (2, 3, 5, 6))
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("param,shapes,msg", [
    ("pad_beg: 1", [(1, 1, 4, 4), (1, 1, 2, 2)], "non-positive"),
    ("", [(1, 1, 4, 4)], "needs zoom_factor"),
    ("zoom_factor: 0", [(1, 1, 4, 4)], ">= 1"),
    ("zoom_factor: 2 pad_beg: -2 pad_end: -2", [(1, 1, 4, 4)], "positive"),
    ("zoom_factor: 2", [(1, 4, 4)], "4 axes"),
])
def test_bad_parameters(param, shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build(param, *shapes)
