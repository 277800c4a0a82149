"""Caffe fork dialects: which fork a net was written for, where forks give one layer type different meanings.

``detect(net)`` recognises the fork from the net's own layer types and fields; ``Net(..., dialect=)`` and the
tools' ``--dialect`` choose one. Builders read the choice as ``ctx.dialect`` (see docs/caffe_forks.md).
"""
from typing import Optional, Tuple

from ..errors import NetspecError

KNOWN = ("bvlc", "deeplab", "pspnet", "segnet", "enet", "ssd", "faster_rcnn")


class DialectError(NetspecError, ValueError):
    """An unknown dialect name."""


def check_dialect(name: Optional[str]) -> Optional[str]:
    """``name`` normalised (lower case, '-' as '_'), or a DialectError listing the known dialects."""
    if name is None:
        return None
    key = str(name).strip().lower().replace("-", "_")
    if key not in KNOWN:
        raise DialectError(f"unknown Caffe dialect '{name}'; known: {', '.join(KNOWN)}")
    return key


# Layer types only one fork (family) defines. "BN" is in none: PSPNet's and SegNet's differ (fields decide).
_TYPES = {
    "segnet": ("Upsample", "DenseImageData"),
    "deeplab": ("Interp", "DenseCRF", "SegAccuracy", "MatRead", "MatWrite", "UniqueLabel", "ImageSegData",
                "AdaptiveBiasChannel", "BiasChannel", "DomainTransform"),
    "ssd": ("PriorBox", "DetectionOutput", "MultiBoxLoss", "Normalize", "AnnotatedData", "Permute",
            "DetectionEvaluate", "VideoData"),
    "faster_rcnn": ("ROIPooling", "SmoothL1Loss"),
}
# Python layers (module) that only one fork's releases use.
_PY_MODULES = {
    "enet": ("spatial_dropout",),
    "faster_rcnn": ("rpn.proposal_layer", "rpn.anchor_target_layer", "rpn.proposal_target_layer",
                    "roi_data_layer.layer"),
}
# Priority when several forks show: the more specific first (ENet is SegNet's fork, PSPNet DeepLab's).
_ORDER = ("enet", "pspnet", "segnet", "ssd", "faster_rcnn", "deeplab")
_PSPNET_BN = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
_SEGNET_BN = ("scale_filler", "shift_filler", "bn_mode")


def _has(msg, field: str) -> bool:
    return field in msg.DESCRIPTOR.fields_by_name and msg.HasField(field)


def _evidence(lp):
    """(dialect, why) pairs that one layer gives."""
    what = f"layer '{lp.name}' ({lp.type})"
    for name, types in _TYPES.items():
        if lp.type in types:
            yield name, f"{what} is a {name} layer type"
    if lp.type == "Python" and lp.HasField("python_param"):
        for name, modules in _PY_MODULES.items():
            if lp.python_param.module in modules:
                yield name, f"{what} runs {lp.python_param.module}.{lp.python_param.layer}"
    if lp.type == "BN" and _has(lp, "bn_param"):
        psp = [f for f in _PSPNET_BN if _has(lp.bn_param, f)]
        seg = [f for f in _SEGNET_BN if _has(lp.bn_param, f)]
        if psp:
            yield "pspnet", f"{what} sets PSPNet's bn_param.{psp[0]}"
        if seg:
            yield "segnet", f"{what} sets SegNet's bn_param.{seg[0]}"
    if _has(lp, "dense_image_data_param") and _has(lp.dense_image_data_param, "label_divide_factor"):
        yield "enet", f"{what} sets ENet's label_divide_factor"
    if _has(lp, "dropout_param"):
        if _has(lp.dropout_param, "sample_weights_test"):
            yield "segnet", f"{what} sets SegNet's dropout_param.sample_weights_test"
        if _has(lp.dropout_param, "scale_train"):
            yield "faster_rcnn", f"{what} sets dropout_param.scale_train (py-faster-rcnn's Caffe)"


def detect(net) -> Optional[Tuple[str, str]]:
    """(dialect, reason) for a NetParameter whose layers show which fork wrote it; None when nothing does.

    Evidence: layer types only one fork defines, Python layer modules of one fork's releases, and fork
    fields (BN's bn_param fields tell PSPNet from SegNet; ENet's label_divide_factor, SegNet's
    sample_weights_test). When several forks show, the more specific wins (ENet over SegNet, PSPNet over
    DeepLab: PSPNet's BN nets also use DeepLab's Interp). A net of BVLC layer types only is "bvlc"."""
    found = {}
    bvlc = True
    from ..registry import LAYERS
    if not len(net.layer) and len(getattr(net, "layers", ())):  # a V1 net (DeepLab v1): read it upgraded
        from .upgrade import upgrade_net
        try:
            net = upgrade_net(net)[0]
        except NetspecError:
            return None
    for lp in net.layer:
        for name, why in _evidence(lp):
            found.setdefault(name, why)
        if lp.type == "BN":
            bvlc = False
            found.setdefault("_bn", f"layer '{lp.name}' is a BN layer")
        entry = LAYERS.find(lp.type)
        if entry is None or not entry.builder.__module__.startswith(_BVLC_MODULES):
            bvlc = False
    if "pspnet" not in found and "_bn" in found and "deeplab" in found and "segnet" not in found:
        found["pspnet"] = f"{found['_bn']} beside DeepLab's Interp ({found['deeplab']})"
    for name in _ORDER:
        if name in found:
            return name, found[name]
    if bvlc and len(net.layer):
        return "bvlc", "BVLC Caffe layer types only"
    return None


# Modules that hold BVLC Caffe's own layer types.
_BVLC_MODULES = tuple(f"netspec.layers.{m}" for m in (
    "python", "shape", "eltwise", "loss", "accuracy", "recurrent", "conv", "pooling", "inner_product", "neuron",
    "normalization", "data"))
