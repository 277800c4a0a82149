"""Interp: bilinear resize of DeepLab / PSPNet Caffe (``InterpParameter``, a netspec schema extension)."""
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError
from ..registry import Export, register
from .base import example_net, fail


def interp_size(h_eff: int, w_eff: int, shrink, zoom, size):
    """Output size from the cropped input size, as PSPNet's InterpLayer::Reshape (a superset of DeepLab's).

    shrink only: (in - 1) // shrink + 1;  zoom only: in + (in - 1) * (zoom - 1);  else height and width when
    both are set;  else shrink then zoom.  ``None`` = not set.
    """
    if size is not None and (shrink is None) == (zoom is None):
        return size
    return tuple(_shrink_zoom(n, shrink, zoom) for n in (h_eff, w_eff))


def _shrink_zoom(n, shrink, zoom):
    if shrink is not None:
        n = (n - 1) // shrink + 1
    if zoom is not None:
        n = n + (n - 1) * (zoom - 1)
    return n


class Interp(nn.Module):
    """Crop ``-pad_beg`` / ``-pad_end`` rows and columns, then resize bilinearly with align_corners=True:
    out[i] samples in[i * (H_eff - 1) / (H_out - 1)] (in[0] when H_out == 1), as Caffe's caffe_cpu_interp2.
    With a 2nd bottom and no size parameter the output takes its H x W; it gets no gradient."""

    def __init__(self, shrink, zoom, size, pad_beg, pad_end):
        super().__init__()
        self.shrink, self.zoom, self.size, self.pad_beg, self.pad_end = shrink, zoom, size, pad_beg, pad_end

    def out_size(self, shape, ref_shape=None):
        """The output H x W for a bottom of ``shape`` (and a 2nd bottom of ``ref_shape``), as InterpLayer's
        Reshape."""
        H, W = shape[-2:]
        h_eff, w_eff = H + self.pad_beg + self.pad_end, W + self.pad_beg + self.pad_end
        if self.shrink is None and self.zoom is None and self.size is None:
            out = tuple(ref_shape[-2:])
        else:
            out = interp_size(h_eff, w_eff, self.shrink, self.zoom, self.size)
        if h_eff <= 0 or w_eff <= 0 or out[0] <= 0 or out[1] <= 0:
            raise LayerError(f"Interp of a {H}x{W} input (cropped to {h_eff}x{w_eff}) to {out[0]}x{out[1]}: "
                             "sizes must be positive")
        return tuple(out)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][:-2]) + self.out_size(*bottom_shapes)]

    def forward(self, x, ref=None):
        out = self.out_size(x.shape, None if ref is None else ref.shape)
        if self.pad_beg or self.pad_end:
            H, W = x.shape[-2:]
            x = x[..., -self.pad_beg:H + self.pad_end, -self.pad_beg:W + self.pad_end]
        return F.interpolate(x, size=out, mode="bilinear", align_corners=True)

    def extra_repr(self):
        return (f"shrink_factor={self.shrink}, zoom_factor={self.zoom}, size={self.size}, "
                f"pad_beg={self.pad_beg}, pad_end={self.pad_end}")


@register("Interp", bottoms=(1, 2), tops=1,
          pure=True,
          export=Export(min_opset=11, needs='Resize with coordinate_transformation_mode align_corners'),
          example=example_net("Interp", 'interp_param { zoom_factor: 2 }'))
def interp(lp, bottom_shapes, ctx):
    """Interp: interp_param height, width, zoom_factor, shrink_factor, pad_beg (0), pad_end (0), or the
    H x W of a 2nd bottom. Pads must be <= 0 (cropping). Sizes in ``interp_size``; precedence as PSPNet:
    shrink only, zoom only, height and width, shrink and zoom, 2nd bottom.
    """
    p = lp.interp_param
    if p.pad_beg > 0 or p.pad_end > 0:
        raise fail(lp, ctx, f"only non-positive padding (cropping) is supported, got pad_beg {p.pad_beg} "
                            f"pad_end {p.pad_end}")
    shrink = p.shrink_factor if p.HasField("shrink_factor") else None
    zoom = p.zoom_factor if p.HasField("zoom_factor") else None
    size = (p.height, p.width) if p.HasField("height") and p.HasField("width") else None
    if (shrink is not None and shrink < 1) or (zoom is not None and zoom < 1):
        raise fail(lp, ctx, f"shrink_factor and zoom_factor must be >= 1, got {shrink} and {zoom}")
    if shrink is None and zoom is None and size is None and len(bottom_shapes) < 2:
        raise fail(lp, ctx, "the output size needs zoom_factor, shrink_factor, height and width, or a 2nd bottom")
    for i, s in enumerate(bottom_shapes):
        if len(s) != 4:
            raise fail(lp, ctx, f"bottom {i} must have 4 axes (N, C, H, W), got shape {tuple(s)}")
    h_eff, w_eff = (n + p.pad_beg + p.pad_end for n in bottom_shapes[0][2:])
    out = (interp_size(h_eff, w_eff, shrink, zoom, size) if shrink or zoom or size
           else tuple(bottom_shapes[1][2:]))
    if min(h_eff, w_eff, *out) <= 0:
        raise fail(lp, ctx, f"input {bottom_shapes[0][2]}x{bottom_shapes[0][3]} cropped to {h_eff}x{w_eff} "
                            f"and resized to {out[0]}x{out[1]}: sizes must be positive")
    return Interp(shrink, zoom, size, p.pad_beg, p.pad_end)
