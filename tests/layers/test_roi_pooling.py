"""ROIPooling (caffe-fast-rcnn) against transcriptions of the fork's Forward_cpu and GPU ROIPoolBackward
loops, and OpenCV's dnn (which has the layer) as a second opinion."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.layers.roi_pooling import c_round
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

F32 = np.float32


def build(param, *shapes):
    lp = text_format.Parse(f'name: "roi" type: "ROIPooling" bottom: "f" bottom: "r" top: "y" '
                           f'roi_pooling_param {{ {param} }}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


def c_round_np(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_geometry(roi, scale, ph_n, pw_n, H, W):
    sw, sh, ew, eh = (int(c_round_np(float(F32(c) * F32(scale)))) for c in roi[1:])
    rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
    bh, bw = F32(rh) / F32(ph_n), F32(rw) / F32(pw_n)
    return sw, sh, ew, eh, bh, bw


def fork_forward(x, rois, ph_n, pw_n, scale):
    """roi_pooling_layer.cpp Forward_cpu, loop for loop, in float32: (top, argmax)."""
    N, C, H, W = x.shape
    top = np.full((len(rois), C, ph_n, pw_n), -np.finfo(F32).max, F32)
    arg = np.full(top.shape, -1)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh, ew, eh, bh, bw = roi_geometry(roi, scale, ph_n, pw_n, H, W)
        for c in range(C):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hs = min(max(int(math.floor(F32(ph) * bh)) + sh, 0), H)
                    he = min(max(int(math.ceil(F32(ph + 1) * bh)) + sh, 0), H)
                    ws = min(max(int(math.floor(F32(pw) * bw)) + sw, 0), W)
                    we = min(max(int(math.ceil(F32(pw + 1) * bw)) + sw, 0), W)
                    if he <= hs or we <= ws:
                        top[n, c, ph, pw] = 0
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, c, h, w] > top[n, c, ph, pw]:
                                top[n, c, ph, pw] = x[b, c, h, w]
                                arg[n, c, ph, pw] = h * W + w
    return top, arg


def fork_backward(top_diff, arg, rois, x_shape, ph_n, pw_n, scale):
    """roi_pooling_layer.cu ROIPoolBackward, per bottom element."""
    N, C, H, W = x_shape
    out = np.zeros(x_shape, F32)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    g = F32(0)
                    for r, roi in enumerate(rois):
                        if int(roi[0]) != n:
                            continue
                        sw, sh, ew, eh, bh, bw = roi_geometry(roi, scale, ph_n, pw_n, H, W)
                        if not (sw <= w <= ew and sh <= h <= eh):
                            continue
                        phs = min(max(int(math.floor(F32(h - sh) / bh)), 0), ph_n)
                        phe = min(max(int(math.ceil(F32(h - sh + 1) / bh)), 0), ph_n)
                        pws = min(max(int(math.floor(F32(w - sw) / bw)), 0), pw_n)
                        pwe = min(max(int(math.ceil(F32(w - sw + 1) / bw)), 0), pw_n)
                        for ph in range(phs, phe):
                            for pw in range(pws, pwe):
                                if arg[r, c, ph, pw] == h * W + w:
                                    g += top_diff[r, c, ph, pw]
                    out[n, c, h, w] = g
    return out


ROIS = np.array([
    [0, 0, 0, 15, 15],         # the whole 16x16 input at scale 0.5 (8x8 map)
    [1, 2.5, 3, 9, 7.4],       # halves rounded away from zero
    [0, -6, -5, 4, 3],         # partly outside the map
    [1, 30, 30, 40, 44],       # entirely outside: every bin empty -> 0
    [0, 7, 5, 7, 5],           # a single cell
    [1, 9, 9, 3, 4],           # x2 < x1: size clamped to 1, no gradient in the fork's kernel
], F32)


@pytest.mark.parametrize("ph,pw,scale", [(2, 2, 0.5), (3, 2, 0.5), (4, 5, 0.25), (7, 7, 0.5)])
def test_forward_and_backward_match_the_fork(ph, pw, scale):
    rng = np.random.default_rng(ph * 10 + pw)
    x = rng.standard_normal((2, 3, 8, 8)).astype(F32)
    m = build(f"pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale}", x.shape, ROIS.shape)
    assert infer_top_shapes(m, [x.shape, ROIS.shape]) == [(len(ROIS), 3, ph, pw)]
    xt = torch.from_numpy(x).requires_grad_()
    y = m(xt, torch.from_numpy(ROIS))
    ref, arg = fork_forward(x, ROIS, ph, pw, scale)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    with torch.no_grad():  # the values-only path (no argmax kept)
        np.testing.assert_array_equal(m(torch.from_numpy(x), torch.from_numpy(ROIS)).numpy(), ref)
    g = rng.standard_normal(ref.shape).astype(F32)
    y.backward(torch.from_numpy(g))
    np.testing.assert_allclose(xt.grad.numpy(), fork_backward(g, arg, ROIS, x.shape, ph, pw, scale), atol=1e-6)


def test_ties_go_to_the_first_maximum_in_row_major_order():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    m = build("pooled_h: 1 pooled_w: 1", x.shape, (1, 5))
    y = m(x, torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float32))
    y.backward()
    expect = torch.zeros(1, 1, 4, 4)
    expect[0, 0, 0, 0] = 1
    assert torch.equal(x.grad, expect)


def test_c_rounding():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, 2.4999998, -2.5])
    assert c_round(v).tolist() == [1, 2, 3, -1, -2, 0, 2, -3]


def test_gradcheck_float64():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 10, 12], [1, 2, 1, 6, 5]], dtype=torch.float64)
    m = build("pooled_h: 3 pooled_w: 2 spatial_scale: 0.5", x.shape, rois.shape)
    assert torch.autograd.gradcheck(lambda t: m(t, rois), (x,))


def test_4d_rois_and_no_rois():
    m = build("pooled_h: 2 pooled_w: 2", (1, 2, 4, 4), (3, 5, 1, 1))
    x = torch.randn(1, 2, 4, 4)
    rois = torch.tensor([[0, 0, 0, 3, 3]] * 3, dtype=torch.float32).reshape(3, 5, 1, 1)
    assert m(x, rois).shape == (3, 2, 2, 2)
    assert m(x, torch.zeros(0, 5)).shape == (0, 2, 2, 2)


@pytest.mark.parametrize("param,shapes,msg", [
    ("pooled_h: 0 pooled_w: 2", [(1, 1, 4, 4), (1, 5)], "must be > 0"),
    ("pooled_h: 2 pooled_w: 2", [(1, 1, 4), (1, 5)], r"\(N, C, H, W\)"),
    ("pooled_h: 2 pooled_w: 2", [(1, 1, 4, 4), (1, 4)], r"rois \(R, 5\)"),
])
def test_bad_parameters(param, shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build(param, *shapes)


def test_batch_index_out_of_range():
    m = build("pooled_h: 2 pooled_w: 2", (1, 1, 4, 4), (1, 5))
    with pytest.raises(LayerError, match="batch index"):
        m(torch.zeros(1, 1, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]))


def test_same_outputs_in_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    import netspec
    from netspec.net.pycaffe import Net
    proto = tmp_path / "roi.prototxt"
    proto.write_text("""name: "roi"
input: "data" input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
input: "rois" input_shape { dim: 6 dim: 5 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "pool"
        roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }
""")
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape)
    net.save(str(tmp_path / "w.caffemodel"))
    x = rng.standard_normal((2, 3, 16, 16)).astype(F32)
    ours = net.forward(data=x, rois=ROIS)["pool"]
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "w.caffemodel"))
    cv.setInput(x, "data")
    cv.setInput(ROIS, "rois")
    theirs = cv.forward("roi_pool")
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
