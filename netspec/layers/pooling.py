"""Pooling and SPP (Caffe ``PoolingParameter``, ``SPPParameter``) with Caffe's output-size rule and windows.

torch's pooling kernels are used whenever they produce Caffe's windows; other geometries pad explicitly.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError
from ..proto import caffe_pb2
from .coords import undefined, window_map
from ..registry import Export, register
from .base import example_net, fail

MAX, AVE, STOCHASTIC = 0, 1, 2  # PoolingParameter.PoolMethod == SPPParameter.PoolMethod
_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def pooled_size(size: int, k: int, s: int, p: int, ceil: bool, any_pad: bool) -> int:
    """Caffe: ceil((size + 2p - k) / s) + 1 (FLOOR: floor), then, only when the layer has any padding,
    one window less if the last one would start in the bottom/right padding ((pooled-1)*s >= size + p)."""
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def _torch_size(size, k, s, p, ceil):
    # torch's pooling_output_shape: the same rule, but the clip applies even without padding.
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _axis_positions(k: int, s: int, p: int, out: int, device):
    """The bottom positions (outside [0, size): padding) that ``out`` windows read along one axis, and the stride
    to pool them with: the padded axis cropped to the windows' extent, or, when the windows skip input
    (stride > kernel), only the windows' own positions side by side, so that memory follows out * kernel and not
    the stride (a stride of 65536 on a 6-pixel input once asked for 34 GB)."""
    if s > k:
        pos = (torch.arange(out, device=device) * s - p)[:, None] + torch.arange(k, device=device)[None, :]
        return pos.reshape(-1), k
    return torch.arange((out - 1) * s + k, device=device) - p, s


def _cover(x, k, s, p, out, value=0.0):
    """``x`` laid out for pooling with kernel ``k``: padded with ``value`` as the windows need. Returns the tensor,
    the strides to pool it with, and the bottom row / column of each of its rows / columns."""
    H, W = x.shape[-2:]
    rows, sh = _axis_positions(k[0], s[0], p[0], out[0], x.device)
    cols, sw = _axis_positions(k[1], s[1], p[1], out[1], x.device)
    xp = F.pad(x, (0, 1, 0, 1), value=value)  # row H and column W hold the padding value
    xp = xp.index_select(-2, torch.where((rows >= 0) & (rows < H), rows, H))
    xp = xp.index_select(-1, torch.where((cols >= 0) & (cols < W), cols, W))
    return xp, (sh, sw), rows, cols


def _window_sum(x, k, s, p, out):
    xp, strides, _, _ = _cover(x, k, s, p, out)
    return F.avg_pool2d(xp, k, strides, divisor_override=1)


def pool2d(x, method: int, k, s, p, ceil: bool, want_mask: bool = False):
    """Caffe pooling of the last two axes of ``x``: (top, mask or None).

    MAX windows are clipped to the input (padding never wins); the first maximum in row-major order wins ties
    (strict ``>``), and the mask holds its flat index h*W + w. AVE divides by the window clipped to H+pad,
    padding counted, the ceil overhang not. STOCHASTIC is Caffe's TEST-phase rule: sum(x^2)/sum(x) over the
    window, 0 where sum(x) <= 0.
    """
    H, W = x.shape[-2:]
    any_pad = p[0] > 0 or p[1] > 0
    out = (pooled_size(H, k[0], s[0], p[0], ceil, any_pad), pooled_size(W, k[1], s[1], p[1], ceil, any_pad))
    if out[0] <= 0 or out[1] <= 0:
        raise LayerError(f"pooling a {H}x{W} input with kernel {k}, stride {s}, pad {p} gives an empty "
                         f"{out[0]}x{out[1]} output")
    native = (all(2 * pp <= kk for pp, kk in zip(p, k))
              and out == (_torch_size(H, k[0], s[0], p[0], ceil), _torch_size(W, k[1], s[1], p[1], ceil)))
    if method == MAX:
        if native:
            if want_mask:
                y, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
                return y, idx.to(x.dtype)
            return F.max_pool2d(x, k, s, p, ceil_mode=ceil), None
        xp, strides, rows, cols = _cover(x, k, s, p, out, -math.inf)  # -inf never wins: windows clipped
        y, idx = F.max_pool2d(xp, k, strides, return_indices=True)
        # A window wholly in the padding is empty: Caffe leaves its initial -FLT_MAX there (mask -1).
        empty = torch.isneginf(y)
        y = torch.where(empty, torch.finfo(torch.float32).min, y)
        if not want_mask:
            return y, None
        wp = xp.shape[-1]
        idx = rows[idx // wp] * W + cols[idx % wp]  # index in the laid-out plane -> bottom-plane h*W + w
        return y, torch.where(empty, -1, idx).to(x.dtype)
    if method == AVE:
        if native:
            return F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True), None
        hs = torch.arange(out[0], device=x.device) * s[0] - p[0]
        ws = torch.arange(out[1], device=x.device) * s[1] - p[1]
        dh = torch.clamp(hs + k[0], max=H + p[0]) - hs
        dw = torch.clamp(ws + k[1], max=W + p[1]) - ws
        return _window_sum(x, k, s, p, out) / (dh[:, None] * dw[None, :]).to(x.dtype), None
    cumsum = _window_sum(x, k, s, p, out)
    cumvalues = _window_sum(x * x, k, s, p, out)
    return torch.where(cumsum > 0, cumvalues / cumsum, torch.zeros_like(cumsum)), None


class Pooling(nn.Module):
    """Caffe pooling over (H, W) of an N x C x H x W bottom; global pooling takes the kernel from the input."""

    def __init__(self, method, kernel, stride, pad, global_pooling, ceil, mask):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad
        self.global_pooling, self.ceil, self.mask = global_pooling, ceil, mask

    def forward(self, x):
        k = tuple(x.shape[-2:]) if self.global_pooling else self.kernel
        y, mask = pool2d(x, self.method, k, self.stride, self.pad, self.ceil, self.mask)
        return (y, mask) if self.mask else y

    def extra_repr(self):
        k = "global" if self.global_pooling else self.kernel
        return (f"{_NAMES[self.method]}, kernel={k}, stride={self.stride}, pad={self.pad}, "
                f"round={'CEIL' if self.ceil else 'FLOOR'}")


def _pair(p, name):
    """Caffe's ``name`` OR ``name_h`` and ``name_w``."""
    h, w = f"{name}_h", f"{name}_w"
    return (getattr(p, h), getattr(p, w)) if p.HasField(h) else (getattr(p, name),) * 2


class DeployPool(nn.Module):
    """Caffe Pooling without Python decisions on the input size, for export (see :func:`_deploy`)."""

    def __init__(self, method: int, kernel, stride, pad, ceil: bool, global_pooling: bool):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, tuple(kernel), tuple(stride), tuple(pad)
        self.ceil, self.global_pooling = ceil, global_pooling

    def forward(self, x):
        if self.global_pooling:
            if self.method == 0:
                return x.amax(dim=(-2, -1), keepdim=True)
            return x.mean(dim=(-2, -1), keepdim=True)
        if self.method == 0:
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)




def _deploy(m, dynamic_hw):
    """Export stand-in (registry ``Export.deploy``), or why the netspec module is traced as it is."""
    if m.mask:
        return "the argmax mask top has no shape-generic export"
    if m.method not in (0, 1):
        return "STOCHASTIC pooling is exported only at the example input size"
    if m.global_pooling:
        return DeployPool(m.method, (1, 1), (1, 1), (0, 0), False, True)
    k, s, p = m.kernel, m.stride, m.pad
    # torch (and ONNX ceil_mode) drop a last window that starts in the padding even without padding; Caffe
    # only with padding. That only differs when stride > kernel and pad == 0; torch also needs 2*pad <= kernel.
    if any(2 * pp > kk for pp, kk in zip(p, k)):
        return f"pad {tuple(p)} exceeds half the kernel {tuple(k)}"
    if m.ceil and all(pp == 0 for pp in p) and any(ss > kk for ss, kk in zip(s, k)):
        return (f"stride {tuple(s)} > kernel {tuple(k)} without padding: Caffe's CEIL output size then "
                      "depends on the input size in a way ONNX's ceil_mode does not reproduce")
    return DeployPool(m.method, k, s, p, m.ceil, False)


def _coord(lp):
    pp = lp.pooling_param
    if pp.global_pooling:
        raise undefined("global pooling")
    pick = lambda name: ([getattr(pp, f"{name}_h"), getattr(pp, f"{name}_w")]  # noqa: E731
                         if pp.HasField(f"{name}_h") else [getattr(pp, name if name != "kernel" else "kernel_size")])
    return window_map(1, pick("kernel"), pick("stride"), pick("pad"))


def _detail(lp) -> str:
    p = lp.pooling_param
    kind = p.PoolMethod.Name(p.pool)
    if p.global_pooling:
        return f"{kind} global"
    return f"{kind} k{p.kernel_size or p.kernel_h} s{p.stride or p.stride_h or 1} p{p.pad or p.pad_h}"


@register("Pooling", bottoms=1, tops=(1, 2),
          coord=_coord, detail=_detail,
          pure=True,
          export=Export(min_opset=lambda m: 10 if m.ceil else 0, deploy=_deploy,
                        needs="MaxPool/AveragePool ceil_mode (Caffe's CEIL output rounding)"),
          colour="#FF9900",
          example=example_net("Pooling", 'pooling_param { pool: MAX kernel_size: 3 stride: 2 }'))
def pooling(lp, bottom_shapes, ctx):
    """Pooling: pooling_param pool (MAX), kernel_size|kernel_h/w, stride|stride_h/w (1), pad|pad_h/w (0),
    global_pooling, round_mode (CEIL; BVLC since 2018) or a fork's ceil_mode. A 2nd top (MAX only) is the argmax mask.

    pooled = ceil((H + 2*pad - k) / stride) + 1, minus 1 when pad > 0 and (pooled-1)*stride >= H + pad
    (torch's ceil_mode clips even without padding). AVE divisor = window clipped to H + pad.
    STOCHASTIC: TEST phase only, sum(x^2)/sum(x) per window (Caffe's GPU test rule; no CPU version).
    """
    p = lp.pooling_param
    if len(bottom_shapes[0]) != 4:
        raise fail(lp, ctx, f"input must have 4 axes (N, C, H, W), got shape {tuple(bottom_shapes[0])}")
    if len(lp.top) == 2 and p.pool != MAX:
        raise fail(lp, ctx, f"only MAX pooling has a 2nd (mask) top, this is {_NAMES.get(p.pool, p.pool)}")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise fail(lp, ctx, "with global_pooling: true the filter size cannot be specified")
        kernel = tuple(bottom_shapes[0][2:])
    else:
        if p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise fail(lp, ctx, "filter size is kernel_size OR kernel_h and kernel_w (both required), not both")
        kernel = (p.kernel_size,) * 2 if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    for name in ("pad", "stride"):
        h, w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
        if (h or w) and (p.HasField(name) or not (h and w)):
            raise fail(lp, ctx, f"{name} is {name} OR {name}_h and {name}_w (both required)")
    pad, stride = _pair(p, "pad"), _pair(p, "stride")
    if min(kernel) <= 0 or min(stride) <= 0:
        raise fail(lp, ctx, f"kernel {kernel} and stride {stride} must be positive")
    if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise fail(lp, ctx, f"with global_pooling: true only pad = 0 and stride = 1, got pad {pad} stride {stride}")
    if pad != (0, 0):
        if p.pool not in (MAX, AVE):
            raise fail(lp, ctx, "padding is implemented only for MAX and AVE pooling")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise fail(lp, ctx, f"pad {pad} must be smaller than the kernel {kernel}")
    if p.pool == STOCHASTIC and ctx.phase == caffe_pb2.TRAIN:
        raise fail(lp, ctx, "STOCHASTIC pooling samples with Caffe's GPU RNG in TRAIN phase and is not "
                            "implemented (Caffe's CPU path is NOT_IMPLEMENTED too); use it in TEST phase")
    if p.pool not in _NAMES:
        raise fail(lp, ctx, f"unknown pooling method {p.pool}")
    floor = "round_mode" in p.DESCRIPTOR.fields_by_name and p.round_mode == p.FLOOR
    if "ceil_mode" in p.DESCRIPTOR.fields_by_name and p.HasField("ceil_mode"):  # BVLC PR #3057 / DenseNet forks
        if p.HasField("round_mode") and p.ceil_mode == floor:
            raise fail(lp, ctx, f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                                f"{p.RoundMode.Name(p.round_mode)}; give one of them")
        floor = not p.ceil_mode
    any_pad = pad != (0, 0)
    out = [pooled_size(n, kk, ss, pp, not floor, any_pad)
           for n, kk, ss, pp in zip(bottom_shapes[0][2:], kernel, stride, pad)]
    if min(out) <= 0:
        raise fail(lp, ctx, f"kernel {kernel}, stride {stride}, pad {pad} on a "
                            f"{bottom_shapes[0][2]}x{bottom_shapes[0][3]} input give an empty {out[0]}x{out[1]} output")
    return Pooling(p.pool, kernel, stride, pad, p.global_pooling, not floor, len(lp.top) == 2)


def spp_level(size, bins):
    """SPPLayer::GetPoolingParam along one axis: (kernel, pad, stride) that cover ``size`` with ``bins`` windows."""
    k = -(-size // bins)
    pad = (k * bins - size + 1) // 2
    return k, pad, k


class SPP(nn.Module):
    """Spatial pyramid pooling: level i pools into 2^i x 2^i bins; levels flattened and concatenated on axis 1.

    A pyramid of height 1 returns the single N x C x 1 x 1 pooling output, as Caffe.
    """

    def __init__(self, method, height):
        super().__init__()
        self.method, self.height = method, height

    def forward(self, x):
        H, W = x.shape[-2:]
        outs = []
        for i in range(self.height):
            (kh, ph, sh), (kw, pw, sw) = spp_level(H, 2 ** i), spp_level(W, 2 ** i)
            if ph >= kh or pw >= kw or ((ph or pw) and self.method == STOCHASTIC):
                raise LayerError(f"SPP level {i} of a {H}x{W} input needs pad {(ph, pw)} with kernel {(kh, kw)}, "
                                 "which Caffe's pooling rejects (pad must be smaller than the kernel, and "
                                 "STOCHASTIC takes no padding)")
            outs.append(pool2d(x, self.method, (kh, kw), (sh, sw), (ph, pw), True)[0])
        if self.height == 1:
            return outs[0]
        return torch.cat([o.flatten(1) for o in outs], dim=1)  # (N, C * sum(bins^2))

    def extra_repr(self):
        return f"{_NAMES[self.method]}, pyramid_height={self.height}"


@register("SPP", bottoms=1, tops=1,
          export=Export(deploy=lambda m, dynamic_hw: dynamic_hw and (
              "derives its pooling windows from the input size in Python") or None),
          example=example_net("SPP", 'spp_param { pyramid_height: 2 }'))
def spp(lp, bottom_shapes, ctx):
    """SPP: spp_param pyramid_height, pool (MAX). Level i: bins = 2^i, kernel = stride = ceil(H / bins),
    pad = (kernel*bins - H + 1) // 2, Caffe's pooling rule (CEIL); each level flattened, concatenated."""
    p = lp.spp_param
    if len(bottom_shapes[0]) != 4:
        raise fail(lp, ctx, f"input must have 4 axes (N, C, H, W), got shape {tuple(bottom_shapes[0])}")
    if p.pyramid_height <= 0:
        raise fail(lp, ctx, f"pyramid_height must be positive, got {p.pyramid_height}")
    if p.pool not in _NAMES:
        raise fail(lp, ctx, f"unknown pooling method {p.pool}")
    if p.pool == STOCHASTIC and ctx.phase == caffe_pb2.TRAIN:
        raise fail(lp, ctx, "STOCHASTIC pooling is not implemented in TRAIN phase")
    H, W = bottom_shapes[0][2:]
    for i in range(p.pyramid_height):
        (kh, ph, _), (kw, pw, _) = spp_level(H, 2 ** i), spp_level(W, 2 ** i)
        if ph >= kh or pw >= kw or ((ph or pw) and p.pool == STOCHASTIC):
            raise fail(lp, ctx, f"pyramid level {i} ({2 ** i} bins) of a {H}x{W} input needs pad {(ph, pw)} "
                                f"with kernel {(kh, kw)}, which Caffe's pooling rejects (pad must be smaller than the "
                                "kernel; STOCHASTIC takes no pad); lower pyramid_height")
    return SPP(p.pool, p.pyramid_height)
