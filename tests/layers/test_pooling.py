"""Pooling and SPP against a literal transcription of Caffe's pooling_layer.cpp loops."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.layers.pooling import pooled_size, spp_level
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

FLT_MAX = np.finfo(np.float32).max


def build(text, *shapes, phase=caffe_pb2.TEST):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=phase, where="t:1: "))


def pool_layer(pool, k, s, p, tops=1, extra=""):
    top = 'top: "y" top: "mask"' if tops == 2 else 'top: "y"'
    return build(f'name: "p" type: "Pooling" bottom: "x" {top} pooling_param {{ pool: {pool} '
                 f'kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} '
                 f'pad_h: {p[0]} pad_w: {p[1]} {extra} }}', SHAPE)


SHAPE = (2, 3, 7, 9)


def caffe_pool(x, pool, k, s, p, g, ceil=True):
    """Caffe's Forward_cpu / Backward_cpu loops: (top, mask, bottom_diff) for top diff g."""
    N, C, H, W = x.shape
    any_pad = p[0] > 0 or p[1] > 0

    def size(n, kk, ss, pp):
        out = int(math.ceil((n + 2 * pp - kk) / ss) if ceil else math.floor((n + 2 * pp - kk) / ss)) + 1
        if any_pad and (out - 1) * ss >= n + pp:
            out -= 1
        return out

    PH, PW = size(H, k[0], s[0], p[0]), size(W, k[1], s[1], p[1])
    top = np.zeros((N, C, PH, PW), np.float32)
    mask = np.full((N, C, PH, PW), -1, np.int64)
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
                    if pool == "MAX":
                        he, we = min(hs + k[0], H), min(ws + k[1], W)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -FLT_MAX, -1
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if x[n, c, h, w] > best:
                                    best, arg = x[n, c, h, w], h * W + w
                        top[n, c, ph, pw], mask[n, c, ph, pw] = best, arg
                        if arg >= 0:
                            dx[n, c, arg // W, arg % W] += g[n, c, ph, pw]
                    else:
                        he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                        size_ = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                        top[n, c, ph, pw] = x[n, c, hs:he, ws:we].sum() / size_
                        dx[n, c, hs:he, ws:we] += g[n, c, ph, pw] / size_
    return top, mask, dx


GEOMETRIES = [  # kernel, stride, pad
    ((3, 3), (2, 2), (0, 0)),   # CEIL adds a partial window
    ((2, 2), (2, 2), (1, 1)),   # the "(pooled-1)*stride >= H+pad" clip
    ((3, 3), (2, 2), (1, 1)),   # last window in the bottom/right padding
    ((3, 2), (1, 2), (1, 0)),   # rectangular; pad only on H, the clip rule still applies to W
    ((3, 3), (2, 3), (2, 1)),   # pad > kernel/2: torch's kernels refuse it, netspec pads itself
    ((1, 2), (3, 4), (0, 0)),   # stride > kernel without pad: no clip in Caffe (torch would clip)
    ((9, 9), (4, 4), (0, 0)),   # kernel larger than H
]


@pytest.mark.parametrize("k,s,p", GEOMETRIES)
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_matches_caffe_loops(pool, k, s, p):
    torch.manual_seed(0)
    x = torch.randn(SHAPE)
    x[0, 0] = 1.0  # a constant plane: every MAX window is a tie
    x[1, 1, :, :4] = x[1, 1, :, 4:8]  # repeated values across windows
    m = pool_layer(pool, k, s, p, tops=2 if pool == "MAX" else 1)
    xr = x.clone().requires_grad_(True)
    out = m(xr)
    y, mask = out if pool == "MAX" else (out, None)
    g = torch.randn(y.shape)
    y.backward(g)
    ref_y, ref_mask, ref_dx = caffe_pool(x.numpy(), pool, k, s, p, g.numpy())
    assert y.shape == ref_y.shape
    assert tuple(infer_top_shapes(m, [SHAPE])[0]) == ref_y.shape
    if pool == "MAX":
        valid = ref_mask >= 0  # windows wholly outside the input: Caffe leaves -FLT_MAX / -1
        np.testing.assert_array_equal(y.detach().numpy()[valid], ref_y[valid])
        np.testing.assert_array_equal(mask.numpy()[valid], ref_mask[valid])
        assert mask.dtype == torch.float32
        np.testing.assert_array_equal(xr.grad.numpy(), ref_dx)
    else:
        np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xr.grad.numpy(), ref_dx, rtol=1e-6, atol=1e-6)


def test_max_ties_send_gradient_to_first_maximum():
    m = pool_layer("MAX", (2, 2), (2, 2), (0, 0), tops=2)
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    y, mask = m(x)
    y.sum().backward()
    assert mask.flatten().tolist() == [0, 2, 8, 10]
    expect = torch.zeros(4, 4)
    expect[::2, ::2] = 1
    assert torch.equal(x.grad[0, 0], expect)


@pytest.mark.parametrize("size,k,s,p,ceil,expect", [
    (8, 3, 2, 0, True, 4),    # ceil(5/2)+1
    (8, 3, 2, 0, False, 3),   # floor
    (5, 2, 2, 1, True, 3),    # ceil(5/2)+1 = 4, clipped: 3*2 >= 5+1
    (6, 3, 2, 1, True, 4),
    (5, 1, 3, 0, True, 3),    # no pad: no clip, the 3rd window starts past the input
])
def test_pooled_size(size, k, s, p, ceil, expect):
    assert pooled_size(size, k, s, p, ceil, p > 0) == expect


def test_round_mode_floor():
    m = build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
              'round_mode: FLOOR }', (1, 1, 8, 8))
    assert m(torch.randn(1, 1, 8, 8)).shape == (1, 1, 3, 3)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_global_pooling_follows_the_input_size(pool):
    m = build(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {pool} global_pooling: true }}',
              (2, 3, 4, 5))
    x = torch.randn(2, 3, 6, 7)
    ref = x.amax((2, 3), keepdim=True) if pool == "MAX" else x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(m(x), ref)


def test_stochastic_test_phase_is_weighted_average():
    m = build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 '
              'stride: 2 }', (1, 1, 4, 4))
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, :2, :2] = torch.tensor([[-1.0, 0.5], [0.25, 0.25]])  # sum 0: Caffe writes 0
    w = x.reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(2, 2, 4)
    ref = torch.where(w.sum(-1) > 0, (w * w).sum(-1) / w.sum(-1), torch.zeros(()))
    torch.testing.assert_close(m(x)[0, 0], ref)


@pytest.mark.parametrize("param,msg", [
    ("pool: MAX global_pooling: true kernel_size: 2", "global_pooling"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
    ("pool: MAX kernel_h: 2", "kernel_size OR"),
    ("pool: MAX", "kernel_size OR"),
    ("pool: MAX kernel_size: 2 pad: 2", "smaller than the kernel"),
    ("pool: MAX kernel_size: 2 pad_h: 1", "pad is pad OR"),
    ("pool: MAX kernel_size: 2 stride: 0", "positive"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "only for MAX and AVE"),
    ("pool: MAX global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 9", "empty"),
])
def test_bad_parameters(param, msg):
    with pytest.raises(LayerError, match=msg):
        build(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {param} }}', (1, 1, 4, 4))


def test_mask_top_only_for_max_and_4d_only():
    with pytest.raises(LayerError, match="2nd"):
        build('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }',
              (1, 1, 4, 4))
    with pytest.raises(LayerError, match="4 axes"):
        build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 }', (1, 4, 4))


def test_stochastic_train_phase_is_refused():
    with pytest.raises(LayerError, match="TRAIN"):
        build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 }',
              (1, 1, 4, 4), phase=caffe_pb2.TRAIN)


def test_spp_levels_concatenate():
    m = build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 pool: MAX }', (2, 3, 9, 10))
    x = torch.randn(2, 3, 9, 10)
    y = m(x)
    assert y.shape == (2, 3 * (1 + 4 + 16))
    parts = []
    for i in range(3):
        (kh, ph, sh), (kw, pw, sw) = spp_level(9, 2 ** i), spp_level(10, 2 ** i)
        ref, _, _ = caffe_pool(x.numpy(), "MAX", (kh, kw), (sh, sw), (ph, pw), np.zeros((2, 3, 2 ** i, 2 ** i)))
        assert ref.shape[2:] == (2 ** i, 2 ** i)
        parts.append(ref.reshape(2, -1))
    np.testing.assert_array_equal(y.numpy(), np.concatenate(parts, 1))


def test_spp_height_one_is_4d_and_small_inputs_are_refused():
    m = build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 pool: AVE }', (2, 3, 5, 6))
    torch.testing.assert_close(m(torch.ones(2, 3, 5, 6)), torch.ones(2, 3, 1, 1))
    with pytest.raises(LayerError, match="level 2"):
        build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }', (1, 1, 5, 5))


def test_empty_max_window_is_minus_flt_max_with_mask_minus_one_as_caffe():
    # CEIL rounding without padding lets a last window start past the input (kernel 1 < stride 3 on 5 pixels:
    # starts 0, 3, 6): Caffe leaves -FLT_MAX there (and mask -1), never -inf.
    import torch
    from netspec.layers.pooling import pool2d
    x = torch.randn(1, 1, 5, 5)
    y, mask = pool2d(x, 0, (1, 1), (3, 3), (0, 0), True, True)
    assert y.shape == (1, 1, 3, 3)
    assert torch.all(y[0, 0, 2] == -3.4028234663852886e38) and torch.all(y[0, 0, :, 2] == -3.4028234663852886e38)
    assert torch.all(mask[0, 0, 2] == -1)
    assert torch.equal(y[0, 0, :2, :2], x[0, 0, ::3, ::3][:2, :2])
