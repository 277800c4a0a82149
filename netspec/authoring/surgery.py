"""Net surgery as FCN does it: weight transplants, bilinear upsampling kernels, zero checks.

* :func:`transplant` copies parameters by layer name from a trained net or ``.caffemodel``
  (V1 files with legacy 4-D blobs included) into a new net, reshaping blobs whose element
  counts match -- which turns VGG's InnerProduct ``fc6``/``fc7`` into FCN's 7×7 / 1×1
  convolutions, since an InnerProduct over pool5 (C×H×W flattened) is exactly a convolution with
  a H×W kernel.
* For **Dilated FCN-2s**, whose ``fc6`` is a 3×3 convolution of dilation 3, VGG's 7×7 ``fc6``
  has 49 taps per channel and the new layer 9. A 3×3 kernel of dilation 3 samples its input at
  offsets 0, 3, 6 of the same 7×7 window, so :func:`transplant` keeps exactly those taps of the
  7×7 kernel (``W7[:, :, ::3, ::3]``): each remaining weight still multiplies the pool5 position
  it multiplied in VGG. (Generally: a k×k kernel of dilation d takes taps 0, d, … of a
  ((k-1)·d+1)² source kernel.) No rescaling is applied; fine-tuning absorbs the change of sum.
  Upstream's ``surgery.transplant`` instead did a numpy ``flat`` copy, which keeps the *first*
  18.9 M of the 102.8 M values in memory order -- a scrambled init; ``mismatch="flat"``
  reproduces it when a bit-exact replay of upstream is wanted.
* :func:`interp` fills upsampling deconvolutions with FCN's bilinear kernel in **diagonal** form
  (``W[c, c] = filter``, every other ``W[i, j] = 0``; §C.4). This differs from Caffe's
  ``bilinear`` filler, which writes the filter into every (i, j) slice and is right only for
  ``group = C`` deconvolutions. Upstream's ``interp`` sets the diagonal and leaves the rest as
  it was (zero under Caffe's default filler); here the off-diagonal is zeroed explicitly.
* :func:`zero_layers` lists layers whose weights are still all zero: the usual cause of an FCN
  "stuck at loss = ln(21)" run is a skipped transplant or interp (Caffe's default filler is 0).
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import WeightsError

log = logging.getLogger("netspec")

__all__ = ["transplant", "TransplantReport", "Transfer", "upsample_filt", "bilinear_kernel",
           "bilinear_weights", "interp", "zero_layers", "dilate_kernel"]


# ------------------------------------------------------------------------------------------------
# Bilinear kernels


def upsample_filt(size: int) -> np.ndarray:
    """FCN's 2-D bilinear upsampling filter of ``size``×``size`` (float32).

    ``factor = (size+1)//2``; ``center = factor-1`` (odd size) or ``factor-0.5`` (even);
    ``w[y, x] = (1 - |y-center|/factor) * (1 - |x-center|/factor)``. ``size=4`` gives
    ``[0.25, 0.75, 0.75, 0.25]`` ⊗ itself. Caffe's ``bilinear`` filler has the same profile for
    the sizes it is made for (``k = 2f - f % 2`` for an upsampling factor ``f``: 4, 8, 16, 32,
    64, 5, 9 …); for other sizes (FCN-AlexNet's 63) it is off-centre and this one is not.
    """
    if size < 1:
        raise ValueError(f"kernel size must be positive, got {size}")
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    prof = 1 - np.abs(og - center) / factor
    return np.outer(prof, prof).astype(np.float32)


#: Alias with the name the issue uses.
bilinear_kernel = upsample_filt


def bilinear_weights(shape: Sequence[int]) -> np.ndarray:
    """The weights :func:`interp` gives a deconvolution blob of ``shape`` = (m, k, h, h).

    ``m == k``: ``W[c, c] = filter`` and zero elsewhere (a full, group-1 deconvolution that
    upsamples every channel on its own). ``k == 1`` (``group = m``): ``W[c, 0] = filter``.
    """
    m, k, h, w = (int(s) for s in shape)
    if m != k and k != 1:
        raise WeightsError(f"bilinear interp needs a square channel map (C, C, h, w) or a depthwise "
                           f"(C, 1, h, w) blob, got {tuple(shape)}")
    if h != w:
        raise WeightsError(f"bilinear interp needs a square kernel, got {h}×{w}")
    out = np.zeros((m, k, h, w), dtype=np.float32)
    filt = upsample_filt(h)
    out[np.arange(m), np.arange(m) if k == m else 0] = filt
    return out


# ------------------------------------------------------------------------------------------------
# Walking a net's parameters


@dataclass
class _Layer:
    name: str
    type: str
    blobs: list          # objects with a writable ``.data`` (ParamBlob) or arrays
    param: object = None  # LayerParameter where known


def _target_layers(net) -> List[_Layer]:
    """The layers of a ``netspec.Net`` that have parameters, in net order, duplicates kept."""
    if not hasattr(net, "layers"):
        raise TypeError(f"expected a netspec.Net, got {type(net).__name__}")
    nodes = getattr(getattr(net, "module", None), "nodes", None)
    out = []
    for i, layer in enumerate(net.layers):
        if not layer.blobs:
            continue
        param = nodes[i].param if nodes is not None and i < len(nodes) else None
        out.append(_Layer(layer.name, layer.type, list(layer.blobs), param))
    return out


def _v1_type_name(layer) -> str:
    t = layer.type
    if isinstance(t, str):
        return t
    try:
        return type(layer).LayerType.Name(t)
    except (AttributeError, ValueError):
        return str(t)


def _source_layers(source) -> Iterator[Tuple[str, str, List[np.ndarray]]]:
    """(name, type, arrays) of every layer with parameters of a Net, caffemodel path,
    ``binary.CaffeModel`` or ``{name: [arrays]}``."""
    if isinstance(source, dict):
        for name, arrays in source.items():
            yield name, "", [np.asarray(a, dtype=np.float32) for a in arrays]
        return
    if hasattr(source, "layers") and hasattr(source, "params"):  # a netspec.Net
        for layer in _target_layers(source):
            yield layer.name, layer.type, [np.array(b.data, dtype=np.float32) for b in layer.blobs]
        return
    from ..formats import binary
    model = source if isinstance(source, binary.CaffeModel) else binary.read_caffemodel(source)
    for layer, arrays in model.items():
        if arrays:
            yield layer.name, _v1_type_name(layer), list(arrays)


def _set(blob, value: np.ndarray):
    if isinstance(blob, np.ndarray):
        blob[...] = value.reshape(blob.shape)
    else:
        blob.data = value.reshape(blob.data.shape)


def _shape(blob) -> Tuple[int, ...]:
    return tuple(blob.shape) if isinstance(blob, np.ndarray) else tuple(blob.data.shape)


def _dilation(param) -> Optional[Tuple[int, int]]:
    """(kernel, dilation) of a square 2-D Convolution layer param, else None."""
    if param is None or param.type != "Convolution":
        return None
    cp = param.convolution_param
    if cp.HasField("kernel_h") or len(cp.kernel_size) != 1 or len(cp.dilation) > 1:
        return None
    return cp.kernel_size[0], (cp.dilation[0] if len(cp.dilation) else 1)


def dilate_kernel(weights: np.ndarray, dilation: int) -> np.ndarray:
    """Taps ``0, d, 2d, …`` of a (out, in, K, K) kernel: the weights a kernel of dilation ``d``
    and size ``(K-1)/d + 1`` needs to sample the same input positions."""
    w = np.asarray(weights)
    if w.ndim != 4 or w.shape[2] != w.shape[3] or (w.shape[2] - 1) % dilation:
        raise WeightsError(f"cannot take dilation-{dilation} taps of a kernel of shape {w.shape}")
    return np.ascontiguousarray(w[:, :, ::dilation, ::dilation])


# ------------------------------------------------------------------------------------------------
# transplant


_VERBS = {"coerce": "coercing", "dilate": "dilating", "flat": "flat-copying", "skip": "skipping"}


@dataclass
class Transfer:
    """One blob's fate. ``action``: ``copy`` (same shape), ``coerce`` (reshaped, same count),
    ``dilate`` (taps of a larger kernel, see module doc), ``flat`` (numpy flat copy: truncated or
    repeated), ``drop`` (no such layer/blob in the new net), ``skip`` (shapes do not fit)."""
    action: str
    source: str
    target: Optional[str]
    index: Optional[int]
    source_shape: Tuple[int, ...] = ()
    target_shape: Tuple[int, ...] = ()

    def __str__(self):
        if self.action == "drop":
            return f"dropping {self.source}" + (f" blob {self.index}" if self.index is not None else "")
        arrow = f"{self.source} -> {self.target} {self.index}"
        if self.action == "copy":
            return f"copying {arrow}"
        verb = _VERBS[self.action]
        return f"{verb} {arrow} from {self.source_shape} to {self.target_shape}"


@dataclass
class TransplantReport:
    transfers: List[Transfer] = field(default_factory=list)
    untouched: List[str] = field(default_factory=list)  # new-net layers that got nothing

    def by_action(self, action: str) -> List[Transfer]:
        return [t for t in self.transfers if t.action == action]

    @property
    def copied(self) -> List[str]:
        """Target layers that received at least one blob."""
        seen = []
        for t in self.transfers:
            if t.action in ("copy", "coerce", "dilate", "flat") and t.target not in seen:
                seen.append(t.target)
        return seen

    def __str__(self):
        lines = [str(t) for t in self.transfers]
        if self.untouched:
            lines.append(f"not in the source (left as initialised): {', '.join(self.untouched)}")
        return "\n".join(lines)


def transplant(new_net, old, suffix: str = "", *, mismatch: str = "error",
               dilate: bool = True) -> TransplantReport:
    """Copy the parameters of ``old`` into ``new_net`` by layer name (FCN's ``surgery.transplant``).

    ``old`` is a ``netspec.Net``, a ``.caffemodel`` path (current or V1 format), a
    ``binary.CaffeModel`` or ``{layer name: [arrays]}``. Source layer ``x`` goes to the first
    layer of ``new_net`` named ``x + suffix``. Per blob:

    * same shape → copied; same element count → reshaped (VGG's InnerProduct fc6 (4096, 25088)
      → FCN's Convolution fc6 (4096, 512, 7, 7); legacy 4-D V1 blobs);
    * a dilated square convolution target whose undilated extent matches the source kernel
      (Dilated FCN-2s fc6: 7×7 → 3×3, dilation 3) → the taps the dilated kernel covers
      (``dilate=False`` to treat it as a mismatch);
    * otherwise ``mismatch`` decides: ``"error"`` raises :class:`WeightsError`, ``"skip"`` leaves
      the target as it is, ``"flat"`` does upstream's numpy ``flat`` assignment (values in memory
      order, truncated or repeated cyclically).

    Source layers or blobs the new net lacks are dropped. Returns a :class:`TransplantReport`
    (also logged line by line at INFO, worded as upstream prints it).
    """
    if mismatch not in ("error", "skip", "flat"):
        raise ValueError(f"mismatch must be 'error', 'skip' or 'flat', not {mismatch!r}")
    targets = _target_layers(new_net)
    by_name: Dict[str, _Layer] = {}
    for layer in targets:
        by_name.setdefault(layer.name, layer)
    report = TransplantReport()
    touched = set()
    for name, _type, arrays in _source_layers(old):
        tname = name + suffix
        target = by_name.get(tname)
        if target is None:
            report.transfers.append(Transfer("drop", name, None, None))
            continue
        for i, src in enumerate(arrays):
            src = np.asarray(src, dtype=np.float32)
            if i >= len(target.blobs):
                report.transfers.append(Transfer("drop", name, tname, i, src.shape))
                continue
            dst = target.blobs[i]
            tshape = _shape(dst)
            count = int(np.prod(tshape))
            action, value = None, None
            if src.shape == tshape:
                action, value = "copy", src
            elif src.size == count:
                action, value = "coerce", src
            elif dilate and i == 0 and len(tshape) == 4:
                kd = _dilation(target.param)
                if kd is not None and kd[1] > 1 and tshape[2] == tshape[3] == kd[0]:
                    extent = (kd[0] - 1) * kd[1] + 1
                    if src.size == tshape[0] * tshape[1] * extent * extent:
                        action = "dilate"
                        value = dilate_kernel(src.reshape(tshape[0], tshape[1], extent, extent),
                                              kd[1])
            if action is None:
                if mismatch == "error":
                    raise WeightsError(
                        f"transplant: cannot fit blob {i} of source layer '{name}' {src.shape} "
                        f"({src.size} values) into layer '{tname}' {tshape} ({count} values); "
                        "pass mismatch='skip' to leave it, or mismatch='flat' for upstream's "
                        "numpy flat copy")
                if mismatch == "skip":
                    action = "skip"
                else:
                    action, value = "flat", np.resize(src.reshape(-1), count)
            if value is not None:
                _set(dst, np.ascontiguousarray(value, dtype=np.float32))
                touched.add(tname)
            report.transfers.append(Transfer(action, name, tname, i, tuple(src.shape), tshape))
    report.untouched = [t.name for t in targets if t.name not in touched]
    for t in report.transfers:
        log.info("%s", t)
    return report


# ------------------------------------------------------------------------------------------------
# interp and zero checks


def interp(net, layer_names: Optional[Iterable[str]] = None) -> List[str]:
    """Set the weights of upsampling layers to FCN's diagonal bilinear kernels (see module doc).

    ``layer_names`` defaults to every Deconvolution layer with parameters. Every layer of a
    given name is set (duplicate names included). Returns the names set.
    """
    layers = _target_layers(net)
    if layer_names is None:
        wanted = [l.name for l in layers if l.type == "Deconvolution"]
    else:
        wanted = list(layer_names)
    known = {l.name for l in layers}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise WeightsError(f"interp: no layer with parameters named {', '.join(map(repr, missing))}")
    done = []
    for layer in layers:
        if layer.name not in wanted:
            continue
        shape = _shape(layer.blobs[0])
        if len(shape) != 4:
            raise WeightsError(f"interp: layer '{layer.name}' has a {len(shape)}-D weight blob "
                               f"{shape}; a 2-D (de)convolution kernel is needed")
        try:
            value = bilinear_weights(shape)
        except WeightsError as e:
            raise WeightsError(f"interp: layer '{layer.name}': {e}") from None
        _set(layer.blobs[0], value)
        if layer.name not in done:
            done.append(layer.name)
    return done


def zero_layers(net, *, include_frozen: bool = True) -> List[str]:
    """Names of the layers with parameters whose weights (blob 0) are still all zero.

    Caffe's default filler is ``constant 0``, so a net that was never given weights (no
    ``--weights``, no transplant, no interp) outputs zeros and its softmax loss stays at ln(C)
    (3.0445 for 21 classes). FCN zero-initialises its ``score*`` layers on purpose; those are
    listed too, so callers should warn when anything *else* is listed. ``include_frozen=False``
    leaves out layers whose every blob has ``lr_mult: 0``.
    """
    out = []
    for layer in _target_layers(net):
        if not include_frozen and layer.param is not None and layer.param.param and \
                all(p.lr_mult == 0 for p in layer.param.param[:len(layer.blobs)]) and \
                len(layer.param.param) >= len(layer.blobs):
            continue
        blob = layer.blobs[0]
        data = blob if isinstance(blob, np.ndarray) else blob.data
        if not np.any(data) and layer.name not in out:
            out.append(layer.name)
    return out
