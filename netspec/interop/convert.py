"""Convert Caffe weights: ``.caffemodel`` <-> PyTorch state dict (``.pt``), list, fold BatchNorm.

Entry points: :func:`convert` (what ``tools/convert_caffemodel.py`` runs), :func:`list_file`,
:func:`caffemodel_to_state_dict`, :func:`fold_batchnorm`. The contract (state-dict keys, shapes, which net
names the blobs, duplicate names, the reverse direction, the BatchNorm folding maths, memory) is written out in
docs/porting_weights.md, "The conversion in full". The folding itself is a pass, ``netspec/passes/fold_bn.py``;
Split stripping is ``netspec.passes.graph.strip_splits``; layers match by name as in ``net.weights.match_layers``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..formats import binary, prototxt
from ..passes import fold_bn, upgrade
from ..formats.atomic import atomic_path
from ..errors import FormatError, NetspecError, WeightsError
from ..passes.graph import prepare_net, strip_splits
from ..net.caffe_net import CaffeNet, module_key
from ..proto import caffe_pb2
from ..registry import LAYERS
from ..net.weights import blob_fits, match_layers

__all__ = [
    "ConvertError",
    "ConvertReport",
    "Weights",
    "caffemodel_to_state_dict",
    "convert",
    "file_kind",
    "fold_batchnorm",
    "list_file",
    "load_state_dict",
    "read_caffemodel_weights",
    "state_dict_to_weights",
    "weights_to_state_dict",
]

log = logging.getLogger("netspec")

from ..proto.caffe_pb2 import TEST, TRAIN  # noqa: E402,F401  (one definition: caffe.proto's Phase)

_CAFFE_EXT = (".caffemodel",)
_TORCH_EXT = (".pt", ".pth")


class ConvertError(NetspecError, ValueError):
    """A conversion that cannot be done as asked (wrong direction, overwrite of an input, missing net)."""


# ---------------------------------------------------------------------------
# weights held between reading and writing
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class LayerWeights:
    """One layer's Caffe blobs: float32 arrays in Caffe order; ``legacy[j]``: blob j had legacy 4-D dims."""

    name: str
    type: str
    arrays: List[np.ndarray]
    legacy: List[bool]


class Weights(OrderedDict):
    """Layer name -> :class:`LayerWeights`, in first-appearance order. A name seen twice keeps the last
    layer's blobs: what Caffe's ``CopyTrainedLayersFrom`` leaves in a net (it copies every source layer in
    order into the layer of that name)."""

    def add(self, lw: LayerWeights) -> None:
        self[lw.name] = lw

    @property
    def parameter_count(self) -> int:
        return sum(a.size for lw in self.values() for a in lw.arrays)


@dataclasses.dataclass
class ConvertReport:
    """What a conversion did: printed by the CLI, returned by :func:`convert`."""

    source: str
    dest: str
    key_source: str = ""            # "prototxt", "caffemodel net", "layer list"
    layers: int = 0                 # layers whose blobs were written
    parameters: int = 0
    bytes_written: int = 0
    dtype: str = "float32"
    upgraded: List[str] = dataclasses.field(default_factory=list)
    ignored: List[str] = dataclasses.field(default_factory=list)   # source layers the net lacks
    missing: List[str] = dataclasses.field(default_factory=list)   # net keys the source lacks
    folded: List[str] = dataclasses.field(default_factory=list)
    not_folded: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)

    def lines(self) -> List[str]:
        out = [f"{self.source} -> {self.dest}: {self.layers} layers, {self.parameters:,} parameters "
               f"({self.dtype}), {self.bytes_written / 1e6:.1f} MB written"]
        if self.key_source:
            out.append(f"  names from: {self.key_source}")
        for line in self.upgraded:
            out.append(f"  upgrade: {line}")
        if self.folded:
            out.append(f"  folded into the preceding layer: {', '.join(self.folded)}")
        for line in self.not_folded:
            out.append(f"  not folded: {line}")
        if self.ignored:
            out.append(f"  ignored source layers (not in the net): {', '.join(self.ignored)}")
        if self.missing:
            out.append(f"  WARNING: not in the source, left out: {', '.join(self.missing)}")
        out += [f"  note: {n}" for n in self.notes]
        return out


# ---------------------------------------------------------------------------
# file kinds, safety
# ---------------------------------------------------------------------------


def file_kind(path: str, *, must_exist: bool = True) -> str:
    """``"caffemodel"`` or ``"torch"`` for ``path``: by extension, else (for an existing file) by content
    (a torch.save file is a zip archive, or a legacy pickle starting with 0x80)."""
    low = os.fspath(path).lower()
    if low.endswith(_CAFFE_EXT):
        return "caffemodel"
    if low.endswith(_TORCH_EXT):
        return "torch"
    if low.endswith((".prototxt", ".pbtxt")):
        raise ConvertError(f"{path} is a net definition, not weights: pass it with --prototxt and give "
                           "the .caffemodel or .pt as the input")
    if must_exist and os.path.isfile(path):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return "torch"
            raise ConvertError(f"{path}: a zip archive that torch.save did not write (a numpy .npz?); "
                               "expected a .caffemodel or a PyTorch state dict")
        with open(path, "rb") as f:
            head = f.read(2)
        return "torch" if head[:1] == b"\x80" else "caffemodel"
    raise ConvertError(f"{path}: cannot tell the format from the extension: use .caffemodel for Caffe "
                       f"weights, .pt or .pth for a PyTorch state dict")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_overwrite(outputs: Iterable[Optional[str]], inputs: Iterable[Optional[str]]) -> None:
    """An output may not be an input file, nor replace a read-only file (a rename would, even for root)."""
    inputs = [i for i in inputs if i]
    for out in outputs:
        if not out:
            continue
        if os.path.exists(out) and not os.stat(out).st_mode & 0o222:
            raise ConvertError(f"refusing to replace the read-only file {out}")
        for inp in inputs:
            if _same_file(out, inp):
                raise ConvertError(f"refusing to overwrite the input file {inp} with the output {out}; "
                                   "write to another path")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_caffemodel_weights(path: str, upgrade_log: Optional[list] = None
                            ) -> Tuple[caffe_pb2.NetParameter, Weights]:
    """Read a caffemodel (V0/V1 files upgraded): ``(net definition, weights)``.

    The definition is the file's own NetParameter after the upgrade, blob data and stubs removed."""
    model = binary.read_caffemodel(path)
    if upgrade.needs_upgrade(model.net):
        model, messages = upgrade.upgrade_caffemodel(model, path)
        if upgrade_log is not None:
            upgrade_log.extend(messages)
    weights = Weights()
    net = caffe_pb2.NetParameter()
    net.CopyFrom(model.net)
    for layer, arrays in zip(model.net.layer, model.blobs):
        if arrays:
            weights.add(LayerWeights(layer.name, layer.type, list(arrays),
                                     [binary.is_legacy_blob(b) for b in layer.blobs]))
    for layer in net.layer:
        del layer.blobs[:]
    return net, weights


def load_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """``torch.load(path, weights_only=True)`` (memory-mapped when possible) of a state dict: a mapping of
    names to tensors, or one nested under ``state_dict`` / ``model``. Anything else is a FormatError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for foreign files
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ""
        if zipfile.is_zipfile(path) or "weights_only" in str(e).lower() or "unsupported global" in str(e).lower():
            hint = (" (it holds Python objects other than tensors, e.g. a whole pickled model: save "
                    "model.state_dict() instead)")
        raise FormatError(f"{path}: expected a PyTorch state dict saved with torch.save, which "
                          f"torch.load(weights_only=True) cannot read: {text}{hint}") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("state_dict", "model", "net"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FormatError(f"{path}: expected a state dict of tensors; key {bad[0]!r} holds a "
                          f"{type(obj[bad[0]]).__name__}")
    return OrderedDict(obj)


# ---------------------------------------------------------------------------
# the net that names the blobs
# ---------------------------------------------------------------------------


def _read_net_def(path: str, upgrade_log: Optional[list] = None):
    """(NetParameter, where) from a text prototxt, or a caffemodel used as a template (its layer list)."""
    from ..net.pycaffe import load_net_param
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: net definition not found")
    if path.lower().endswith(".caffemodel"):
        net, _ = read_caffemodel_weights(path, upgrade_log)
        return net, (lambda i: f"{path}: ")
    return load_net_param(path, upgrade_log=upgrade_log)


def _net_phase(net: caffe_pb2.NetParameter, default: int = TEST) -> int:
    """The phase a Caffe-written caffemodel was saved in (every layer carries it), else ``default``."""
    for layer in net.layer:
        if layer.HasField("phase"):
            return layer.phase
    return default


def build_module(net: caffe_pb2.NetParameter, phase: int = TEST,
                 where: Callable[[int], str] = lambda i: "") -> CaffeNet:
    """The CaffeNet of ``net`` with its parameters on the meta device (shapes and names, no memory, no
    filler time); built on the CPU if some layer cannot be built on meta."""
    prepared, origin = prepare_net(net, phase, where=where)
    located = (lambda i: where(origin[i]))
    try:
        with torch.device("meta"):
            return CaffeNet(prepared, phase, located)
    except NetspecError:
        raise
    except Exception as e:  # a builder that needs real tensors
        log.debug("building on the meta device failed (%s); building on the CPU", e)
        return CaffeNet(prepared, phase, located)


def _param_names(module: CaffeNet, index: int) -> List[str]:
    return [n for n, _ in module.get_module(index).named_parameters()]


def _reserved_names() -> set:
    """Names ``hasattr(CaffeNet, name)`` is true for before any layer is added (see CaffeNet.__init__)."""
    names = set(dir(CaffeNet)) | set(vars(nn.Module()))
    names |= {"name", "phase", "force_backward", "nodes", "input_blobs", "blob_shapes", "param_owner"}
    return names


def _table_attrs(layer: caffe_pb2.LayerParameter, count: int) -> Optional[List[str]]:
    """Parameter names of ``count`` blobs when no net can be built: the registry's ``blobs`` for the type."""
    entry = LAYERS.find(layer.type)
    attrs = entry.blobs if entry is not None else None
    attrs = (attrs(layer) if callable(attrs) else attrs) or ()
    if len(attrs) < count:
        return None
    return list(attrs[:count])


def _layer_list_keys(net: caffe_pb2.NetParameter, weights: Weights):
    """Keys without a built net: ``{layer name: [key per blob]}`` following CaffeNet's key rules."""
    used, reserved = set(), _reserved_names()
    keys: Dict[str, List[str]] = {}
    names = [l.name for l in net.layer] or list(weights)
    layers = {l.name: l for l in net.layer}
    for name in names:
        base = module_key(name)
        key, k = base, 1
        while key in used or key in reserved:
            key = f"{base}#{k}"
            k += 1
        used.add(key)
        lw = weights.get(name)
        if lw is None:
            continue
        attrs = _table_attrs(layers[name], len(lw.arrays)) if name in layers else None
        keys[name] = [f"{key}.{a}" for a in attrs] if attrs else [f"{key}.{j}" for j in range(len(lw.arrays))]
    return keys


def _blob_error(where: str, lw_name: str, node, j: int, attr: str, src_shape, dst_shape, src: str,
                net_src: str) -> WeightsError:
    return WeightsError(
        f"{where}layer '{lw_name}' ({node.type}) blob {j} ({attr}): {src} has shape "
        f"{tuple(int(d) for d in src_shape)} but {net_src} needs {tuple(int(d) for d in dst_shape)}")


def _match(module: CaffeNet, weights: Weights, src: str, net_src: str, report: ConvertReport,
           *, require_all: bool):
    """Match layers by name as Caffe does; ``[(node, [(key, array reshaped to the module's shape)])]``."""
    matched = []
    for name, lw, node in match_layers(module, weights.items()):  # the last layer of a name, as Caffe's index
        if node is None:
            report.ignored.append(name)
            continue
        attrs = _param_names(module, node.index)
        params = module.layer_blobs(node.index)
        if len(attrs) != len(lw.arrays):
            if not lw.arrays:
                continue
            raise WeightsError(f"{node.where}layer '{name}' ({node.type}): {src} has {len(lw.arrays)} blobs, "
                               f"the layer in {net_src} has {len(attrs)} ({', '.join(attrs) or 'none'})")
        pairs = []
        for j, (arr, legacy, attr, p) in enumerate(zip(lw.arrays, lw.legacy, attrs, params)):
            if not blob_fits(tuple(p.shape), arr, legacy):
                raise _blob_error(node.where, name, node, j, attr, arr.shape, p.shape, src, net_src)
            pairs.append((f"{node.key}.{attr}", arr.reshape(tuple(p.shape))))
        matched.append((node, pairs))
    if weights and not matched and any(lw.arrays for lw in weights.values()):
        raise WeightsError(f"none of the {len(weights)} layers with blobs in {src} has a namesake in {net_src} "
                           f"(e.g. '{next(iter(weights))}'): is it the net these weights belong to?")
    have = {n.index for n, _ in matched}
    for node in module.nodes:
        if module.layer_blobs(node.index) and node.index not in have:
            report.missing.append(f"{node.name} ({node.type})")
    if require_all and report.missing:
        raise WeightsError(f"{src} has no blobs for {len(report.missing)} layer(s) of {net_src}: "
                           f"{', '.join(report.missing)}")
    return matched


def _to_tensor(arr: np.ndarray, dtype: torch.dtype, where: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(arr, dtype=np.float32, order="C"))
    if dtype == torch.float32:
        return t
    if dtype == torch.float16:
        big = max(float(arr.max()), -float(arr.min())) if arr.size else 0.0  # no |arr| temporary
        if big > float(torch.finfo(torch.float16).max):
            raise ConvertError(f"{where}: values up to {big:g} overflow float16 (max 65504); keep float32"
                               " (BatchNorm accumulators are var * scale factor: --fold-bn removes them)")
    return t.to(dtype)


def weights_to_state_dict(weights: Weights, net: Optional[caffe_pb2.NetParameter], *,
                          phase: Optional[int] = None, where: Callable[[int], str] = lambda i: "",
                          dtype: torch.dtype = torch.float32, src: str = "the caffemodel",
                          net_src: str = "the net", report: Optional[ConvertReport] = None,
                          strict: bool = False, allow_layer_list: bool = False, consume: bool = False):
    """The state dict (``OrderedDict`` key -> tensor, in ``module.state_dict()`` order) of ``weights`` for the
    netspec module of ``net``. See the module docstring for the keys. ``allow_layer_list``: when the net
    cannot be built, derive keys from the layer list instead of failing. ``consume``: drop each layer's
    arrays from ``weights`` once converted (float16 output then never holds both copies of the model)."""
    report = report if report is not None else ConvertReport(src, "")
    if phase is None:
        phase = _net_phase(net) if net is not None else TEST
    module = None
    if net is not None:
        try:
            module = build_module(net, phase, where)
        except Exception as e:
            if not allow_layer_list:
                raise
            report.notes.append(f"the net of {net_src} cannot be built ({e}); keys derived from its layer "
                                "list (<layer>.<attr>, <layer>.<blob index> for other types)")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    if module is None:
        report.key_source = "layer list"
        keys = _layer_list_keys(net if net is not None else caffe_pb2.NetParameter(), weights)
        for name, lw in weights.items():
            for key, arr in zip(keys[name], lw.arrays):
                out[key] = _to_tensor(arr, dtype, f"layer '{name}' ({lw.type})")
            report.layers += 1
        report.parameters = sum(t.numel() for t in out.values())
        return out
    report.key_source = report.key_source or net_src
    matched = _match(module, weights, src, net_src, report, require_all=strict)
    produced = {}
    for node, pairs in matched:
        for j, (key, arr) in enumerate(pairs):
            produced[key] = _to_tensor(arr, dtype, f"layer '{node.name}' ({node.type})")
            pairs[j] = (key, None)
        if consume and node.name in weights:  # let the float32 arrays go as we convert
            weights[node.name].arrays = [None] * len(weights[node.name].arrays)
        report.layers += 1
    for key in module.state_dict().keys():
        if key in produced:
            out[key] = produced[key]
    report.parameters = sum(t.numel() for t in out.values())
    return out


def state_dict_to_weights(state: Dict[str, torch.Tensor], module: CaffeNet, *, src: str = "the state dict",
                          net_src: str = "the net", strict_unexpected: bool = False) -> Weights:
    """Caffe blobs (float32 arrays) of every layer of ``module`` from a state dict keyed as the module's.
    Accepts ``<key>.<attr>`` and the layer-list form ``<key>.<blob index>``. Every blob must be present
    with the module's shape (WeightsError naming the layer and both shapes)."""
    weights = Weights()
    used = set()
    missing = []
    for node in module.nodes:
        attrs = _param_names(module, node.index)
        if not attrs:
            continue
        arrays = []
        for j, (attr, p) in enumerate(zip(attrs, module.layer_blobs(node.index))):
            key = f"{node.key}.{attr}"
            if key not in state and f"{node.key}.{j}" in state:
                key = f"{node.key}.{j}"
            if key not in state:
                missing.append(key)
                continue
            t = state[key]
            used.add(key)
            if tuple(t.shape) != tuple(p.shape):
                if t.numel() == p.numel() and t.dim() != p.dim():  # e.g. a layer-list key of a legacy blob
                    t = t.reshape(p.shape)
                else:
                    raise _blob_error(node.where, node.name, node, j, attr, t.shape, p.shape, src, net_src)
            if not (t.is_floating_point()):
                raise WeightsError(f"{node.where}layer '{node.name}' ({node.type}) blob {j} ({attr}): {src} "
                                   f"holds {t.dtype}, expected a floating-point tensor")
            arrays.append(t.detach().to("cpu", torch.float32).contiguous().numpy())
        weights.add(LayerWeights(node.name, node.type, arrays, [False] * len(arrays)))
    if missing:
        raise WeightsError(f"{src} lacks {len(missing)} blob(s) the net of {net_src} needs: "
                           f"{', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    unexpected = [k for k in state if k not in used]
    if unexpected:
        msg = (f"{src} has {len(unexpected)} key(s) the net of {net_src} does not use: "
               f"{', '.join(unexpected[:12])}{' ...' if len(unexpected) > 12 else ''}")
        if strict_unexpected:
            raise WeightsError(msg)
        log.warning(msg)
    return weights


# ---------------------------------------------------------------------------
# BatchNorm folding (the pass is netspec/passes/fold_bn.py)
# ---------------------------------------------------------------------------


def fold_batchnorm(net: caffe_pb2.NetParameter, weights: Weights
                   ) -> Tuple[caffe_pb2.NetParameter, Weights, List[str], List[str]]:
    """Fold every foldable BatchNorm (and the Scale right after it) into the Convolution, Deconvolution or
    InnerProduct before it (:func:`netspec.passes.fold_bn.fold`; maths in docs/porting_weights.md). Returns
    ``(net, weights, folded, skipped)``: new objects, the inputs untouched; ``folded`` names the removed
    layers, ``skipped`` says why a BatchNorm stayed."""
    out, absorbed, folded, skipped = fold_bn.fold(net, {name: lw.arrays for name, lw in weights.items()})
    if not absorbed:
        return out, Weights(weights), [], skipped
    new_weights = Weights()
    for name, ltype, arrays in absorbed:
        new_weights.add(LayerWeights(name, ltype, arrays, [weights[name].legacy[0], False]))
    for name, lw in weights.items():
        if name not in new_weights and name not in folded:
            new_weights.add(lw)
    return out, new_weights, folded, skipped


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


class _BlobSource:
    """What :func:`netspec.formats.binary.write_net_module` reads from a module, with blobs from arrays."""

    def __init__(self, module: CaffeNet, blobs: Dict[int, List[np.ndarray]]):
        self.nodes, self.phase, self._blobs = module.nodes, module.phase, blobs

    def layer_blobs(self, index: int):
        return [torch.from_numpy(a) for a in self._blobs.get(index, [])]


def _write_caffemodel(path: str, module: CaffeNet, weights: Weights, net_param, src: str, net_src: str,
                      report: ConvertReport) -> None:
    matched = _match(module, weights, src, net_src, report, require_all=True)
    blobs = {node.index: [np.asarray(a, dtype=np.float32, order="C") for _, a in pairs] for node, pairs in matched}
    # Shared params (ParamSpec.name) appear in every sharing layer, as Caffe writes them.
    for node in module.nodes:
        if node.index not in blobs and module.layer_blobs(node.index):
            raise WeightsError(f"no blobs for layer '{node.name}' ({node.type})")
    binary.write_net_module(path, _BlobSource(module, blobs), net_param)
    report.layers = len(matched)
    report.parameters = sum(a.size for arrays in blobs.values() for a in arrays)


def _save_state_dict(state, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ---------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------


def caffemodel_to_state_dict(caffemodel: str, prototxt_path: Optional[str] = None, *,
                             fold_bn: bool = False, dtype: torch.dtype = torch.float32,
                             phase: int = TEST, report: Optional[ConvertReport] = None):
    """``(state dict, net definition)`` of a caffemodel, keyed as ``Net(prototxt_path).module`` (or as the
    net of the caffemodel's own layer list). See the module docstring."""
    report = report if report is not None else ConvertReport(os.fspath(caffemodel), "")
    net, weights = read_caffemodel_weights(caffemodel, report.upgraded)
    where = lambda i: ""  # noqa: E731
    net_src = f"{caffemodel}'s own layer list"
    allow = True
    if prototxt_path:
        net, where = _read_net_def(prototxt_path, report.upgraded)
        net_src, allow = os.fspath(prototxt_path), False
    else:
        phase = _net_phase(net, phase)
    if fold_bn:
        net, weights, report.folded, report.not_folded = fold_batchnorm(net, weights)
        where = lambda i: ""  # noqa: E731  (layer indices changed)
    state = weights_to_state_dict(weights, net, phase=phase, where=where, dtype=dtype, src=os.fspath(caffemodel),
                                  net_src=net_src, report=report, allow_layer_list=allow)
    return state, net


def convert(src: str, dst: str, *, prototxt_path: Optional[str] = None, fp16: bool = False,
            fold_bn: bool = False, out_prototxt: Optional[str] = None, phase: int = TEST,
            strict: bool = False) -> ConvertReport:
    """Convert ``src`` to ``dst``, the direction given by the extensions (``.caffemodel``, ``.pt``/``.pth``).

    * caffemodel -> pt: a state dict (:func:`torch.save`, loadable with ``weights_only=True``);
    * pt -> caffemodel: needs ``prototxt_path``; written as Caffe's ``net.save()``;
    * caffemodel -> caffemodel (upgrade V1, fold) and pt -> pt (fold with a prototxt; fp16 without one)
      work too.

    ``fp16`` stores float16 tensors (``.pt`` only: caffemodels hold float32). ``fold_bn`` folds BatchNorm
    (+Scale) into the preceding layer; ``out_prototxt`` writes the net definition used (folded, Split layers
    of a caffemodel's own list removed). ``strict``: fail when the source lacks blobs the net needs.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    src_kind, dst_kind = file_kind(src), file_kind(dst, must_exist=False)
    _check_request(src, dst, dst_kind, prototxt_path, out_prototxt, fp16)
    report = ConvertReport(src, dst, dtype="float16" if fp16 else "float32")
    dtype = torch.float16 if fp16 else torch.float32
    if src_kind != "caffemodel" and dst_kind == "torch" and not prototxt_path and not fold_bn and not out_prototxt:
        return _recast_state_dict(src, dst, dtype, report)
    net, weights, where, net_src, own, phase = _read_source(src, src_kind, dst, prototxt_path, phase, report)
    if fold_bn:
        net, weights, report.folded, report.not_folded = fold_batchnorm(net, weights)
        where = lambda i: ""  # noqa: E731
        if not report.folded:
            report.notes.append("no BatchNorm layer could be folded")
    if dst_kind == "torch":
        state = weights_to_state_dict(weights, net, phase=phase, where=where, dtype=dtype, src=src,
                                      net_src=net_src, report=report, strict=strict, allow_layer_list=own,
                                      consume=True)
        _save_state_dict(state, dst)
    else:
        _write_weights(dst, net, weights, phase, where, src, net_src, own, report)
    report.bytes_written = os.path.getsize(dst)
    if out_prototxt:
        prototxt.write_text(strip_splits(net) if own else net, out_prototxt)
        report.notes.append(f"net definition written to {out_prototxt}")
    return report


def _check_request(src: str, dst: str, dst_kind: str, prototxt_path: Optional[str], out_prototxt: Optional[str],
                   fp16: bool) -> None:
    """Refuse what :func:`convert` cannot do before reading anything."""
    _refuse_overwrite([dst, out_prototxt], [src, prototxt_path])
    if out_prototxt and _same_file(out_prototxt, dst):
        raise ConvertError(f"--out-prototxt {out_prototxt} is the output weights file")
    if not os.path.isfile(src):
        raise ConvertError(f"{src}: no such file")
    if fp16 and dst_kind == "caffemodel":
        raise ConvertError("--fp16: a caffemodel stores float32 (BlobProto has no half-precision field); "
                           "fp16 is for .pt output")


def _recast_state_dict(src: str, dst: str, dtype: torch.dtype, report: ConvertReport) -> ConvertReport:
    """.pt -> .pt without a net: a change of dtype only (e.g. --fp16), keys kept."""
    state = load_state_dict(src)
    out = OrderedDict()
    for k, v in state.items():
        out[k] = (_to_tensor(v.detach().float().numpy(), dtype, f"key '{k}'")
                  if v.is_floating_point() else v)
    _save_state_dict(out, dst)
    report.layers = len({k.rsplit(".", 1)[0] for k in out})
    report.parameters = sum(v.numel() for v in out.values())
    report.key_source = f"the keys of {src}"
    report.bytes_written = os.path.getsize(dst)
    return report


def _read_source(src: str, src_kind: str, dst: str, prototxt_path: Optional[str], phase: int,
                 report: ConvertReport):
    """``(net, weights, where, net_src, own, phase)``: the source's blobs, the net that names them (``own``: the
    caffemodel's own layer list), its location function and description, and the phase to build it in."""
    where = lambda i: ""  # noqa: E731
    if src_kind == "caffemodel":
        net, weights = read_caffemodel_weights(src, report.upgraded)
        net_src, own = f"{src}'s own layer list", True
        if prototxt_path:
            net, where = _read_net_def(prototxt_path, report.upgraded)
            net_src, own = prototxt_path, False
        else:
            phase = _net_phase(net, phase)
        return net, weights, where, net_src, own, phase
    if not prototxt_path:
        raise ConvertError(f"{src} -> {dst}: a state dict does not say which key is which Caffe blob; "
                           "give the net with --prototxt")
    state = load_state_dict(src)
    net, where = _read_net_def(prototxt_path, report.upgraded)
    module = build_module(net, phase, where)
    weights = state_dict_to_weights(state, module, src=src, net_src=prototxt_path)
    return net, weights, where, prototxt_path, False, phase


def _write_weights(dst: str, net, weights: Weights, phase: int, where, src: str, net_src: str, own: bool,
                   report: ConvertReport) -> None:
    """The caffemodel ``dst`` as Caffe's net.save() writes it; for a caffemodel's own layer list whose net
    cannot be built, its layers as stored."""
    try:
        module = build_module(net, phase, where)
    except Exception as e:
        if not own:
            raise
        # A caffemodel whose own net cannot be built (e.g. its Data layer's LMDB is absent): write its
        # layers back as they are, upgraded (what Caffe's upgrade_net_proto_binary does).
        report.notes.append(f"the net cannot be built ({e}); layers written as stored")
        _write_layer_list(dst, net, weights)
        report.layers = len(weights)
        report.parameters = weights.parameter_count
        report.key_source = "layer list"
    else:
        report.key_source = net_src
        _write_caffemodel(dst, module, weights, net, src, net_src, report)


def _write_layer_list(path: str, net: caffe_pb2.NetParameter, weights: Weights) -> None:
    blobs = []
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        lw = weights.get(layer.name)
        arrays = lw.arrays if lw is not None else []
        del layer.blobs[:]
        for a, legacy in zip(arrays, lw.legacy if lw is not None else []):
            stub = layer.blobs.add()
            if legacy and a.ndim <= 4:
                full = (1,) * (4 - a.ndim) + tuple(a.shape)
                stub.num, stub.channels, stub.height, stub.width = full
            else:
                stub.shape.dim.extend(a.shape)
        blobs.append(list(arrays))
    binary.write_caffemodel(path, out, blobs)


# ---------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------


def _format_version(net) -> str:
    if net.layers and any(l.HasField("layer") for l in net.layers):
        return "V0 (NetParameter.layers with nested V0 'layer' params; upgraded when converted)"
    if net.layers and net.layer:
        return "mixed V1 'layers' and current 'layer' (Caffe refuses such a file)"
    if net.layers:
        return "V1 (NetParameter.layers, field 2, enum layer types; upgraded when converted)"
    return "current (NetParameter.layer, field 100)"


def _shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def list_file(path: str) -> str:
    """A table of a caffemodel's layers (name, type, blob shapes, parameter count), totals and format
    version; or of a state dict's keys, for a ``.pt`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    if file_kind(path) == "torch":
        return _list_state_dict(path)
    model = binary.read_caffemodel(path)
    net = model.net
    rows = []
    total = blobs = with_blobs = 0
    any_legacy = False
    for kind, (layer, arrays) in zip(["V1"] * len(net.layers) + [""] * len(net.layer), model.items()):
        if kind:
            if layer.HasField("layer"):  # V0: the type and params live in the nested layer
                ltype = f"{layer.layer.type} (V0)"
            else:
                ltype = upgrade.v1_layer_type_name(layer.type)
            stubs = list(layer.blobs) + list(layer.layer.blobs)
        else:
            ltype, stubs = layer.type, list(layer.blobs)
        shapes = []
        for stub, a in zip(stubs, arrays):
            legacy = binary.is_legacy_blob(stub)
            any_legacy |= legacy
            shapes.append(_shape_str(a.shape) + ("*" if legacy else ""))
        n = sum(a.size for a in arrays)
        total += n
        blobs += len(arrays)
        with_blobs += bool(arrays)
        rows.append((str(len(rows)), layer.name, ltype, ", ".join(shapes) or "-", f"{n:,}" if arrays else ""))
    head = ("#", "layer", "type", "blobs", "params")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]

    def fmt(r):
        return "  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                          r[3].ljust(widths[3]), r[4].rjust(widths[4])]).rstrip()

    size = os.path.getsize(path)
    lines = [f"{path}: {size:,} bytes, net '{net.name}'",
             f"format: {_format_version(net)}",
             "", fmt(head)] + [fmt(r) for r in rows]
    lines.append("")
    if any_legacy:
        lines.append("* legacy num/channels/height/width dims (Caffe reshapes them to the layer's blob shape)")
    lines.append(f"total: {len(rows)} layers, {with_blobs} with blobs, {blobs} blobs, {total:,} parameters "
                 f"({total * 4 / 1e6:.1f} MB as float32)")
    return "\n".join(lines)


def _list_state_dict(path: str) -> str:
    state = load_state_dict(path)
    rows = [(k, str(v.dtype).replace("torch.", ""), _shape_str(v.shape), f"{v.numel():,}")
            for k, v in state.items()]
    head = ("key", "dtype", "shape", "params")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]

    def fmt(r):
        return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                          r[3].rjust(widths[3])])

    total = sum(v.numel() for v in state.values())
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    return "\n".join([f"{path}: PyTorch state dict, {len(state)} tensors", "", fmt(head)]
                     + [fmt(r) for r in rows]
                     + ["", f"total: {total:,} parameters ({nbytes / 1e6:.1f} MB)"])
