"""Moving weights between a built net and ``.caffemodel`` files, matching layers by name as Caffe does; and the
warning about layers whose weights are still all zero when a net starts training (:func:`warn_zero_layers`)."""
import logging
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import torch

from ..errors import WeightsError

log = logging.getLogger("netspec")

T = TypeVar("T")


def _legacy4(shape) -> Tuple[int, ...]:
    shape = tuple(shape)
    return (1,) * (4 - len(shape)) + shape


def blob_fits(target_shape, array: np.ndarray, legacy: bool) -> bool:
    """Caffe's Blob::ShapeEquals: legacy (num, channels, height, width) blobs compare to the target's
    shape left-padded with ones to 4 axes; new-style blobs compare exactly."""
    target_shape = tuple(target_shape)
    if legacy:
        return len(target_shape) <= 4 and _legacy4(target_shape) == _legacy4(array.shape)
    return target_shape == tuple(array.shape)


def match_layers(module, source: Iterable[Tuple[str, T]]) -> Iterator[Tuple[str, T, Optional[object]]]:
    """Caffe's layer matching by name (Net::CopyTrainedLayersFrom, ShareTrainedLayersWith): ``(name, item,
    node)`` for each ``(name, item)`` of ``source``, in its order, ``node`` the layer of that name in the
    CaffeNet ``module`` or None. With duplicate names in the net the *last* layer of a name is the one matched,
    as Caffe's layer-name index keeps it; a name ``source`` holds twice is matched twice (the later wins)."""
    index = {node.name: node.index for node in module.nodes}
    for name, item in source:
        i = index.get(name)
        yield name, item, (module.nodes[i] if i is not None else None)


def copy_trained_layers(module, path: str) -> List[str]:
    """Caffe's Net::CopyTrainedLayersFrom over a CaffeNet. Returns the names of the layers copied.

    Source layers with no layer of the same name in the net are ignored (and logged); with duplicate names
    the last layer of that name receives the weights, as Caffe's name index does."""
    import os
    from ..formats import binary
    from ..passes import upgrade
    if not os.path.isfile(path):
        what = "is a directory, not a .caffemodel" if os.path.isdir(path) else "not found"
        raise WeightsError(f"{path}: weights file {what} (working directory {os.getcwd()})")
    copied = []
    layers = ((name, blobs) for name, _type, blobs in upgrade.weight_layers(binary.read_caffemodel(path)))
    for name, blobs, node in match_layers(module, layers):
        if node is None:
            log.info("Ignoring source layer %s", name)
            continue
        target = module.layer_blobs(node.index)
        if len(target) != len(blobs):
            if not blobs:
                continue
            raise WeightsError(
                f"{path}: Incompatible number of blobs for layer '{name}': the file has {len(blobs)}, "
                f"layer '{name}' ({node.type}) in the net has {len(target)}")
        for j, ((arr, legacy), p) in enumerate(zip(blobs, target)):
            if not blob_fits(p.shape, arr, legacy):
                raise WeightsError(
                    f"{path}: Cannot copy param {j} weights from layer '{name}'; shape mismatch. Source param "
                    f"shape is {' '.join(map(str, arr.shape))} ({arr.size}); target param shape is "
                    f"{' '.join(map(str, p.shape))} ({p.numel()}). To learn this layer's parameters from "
                    "scratch rather than copying from a saved net, rename the layer.")
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(p.shape))
        copied.append(name)
    return copied


def report_unloaded(module, copied, source: str, strict: bool = False) -> None:
    """After loading ``source`` (one or more files): a WARNING for every layer with parameters that received
    nothing (it keeps its filler values: intended for new layers when finetuning, a silent failure when the file
    is another net's or a layer was renamed), and a summary line; ``strict`` makes any such layer an error."""
    with_params = [n for n in module.nodes if len(module.layer_blobs(n.index))]
    loaded_names = set(copied)
    missing = [n for n in with_params if n.name not in loaded_names]
    loaded = len(with_params) - len(missing)
    for n in missing:
        log.warning("Layer '%s' (%s) got no weights from %s (no layer of that name there): it keeps its initial "
                    "values", n.name, n.type, source)
    if missing and strict:
        raise WeightsError(f"{source}: {len(missing)} of {len(with_params)} layers with parameters got no weights "
                           f"(strict): {', '.join(n.name for n in missing[:20])}"
                           f"{' ...' if len(missing) > 20 else ''}; check the layer names or drop strict")
    level = logging.WARNING if with_params and loaded == 0 else logging.INFO
    log.log(level, "Loaded weights for %d of %d layers with parameters from %s%s", loaded, len(with_params), source,
            " (none matched: is it the caffemodel of another net?)" if level == logging.WARNING else "")


def save_caffemodel(module, net_param, path: str, *, with_diff: bool = False) -> None:
    """Write a caffemodel that real Caffe and OpenCV's dnn module read (atomically)."""
    from ..formats import binary
    binary.write_net_module(path, module, net_param, with_diff=with_diff)


def share_trained_layers(module, other) -> None:
    """Caffe's ShareTrainedLayersWith: layers of the same name use ``other``'s parameter tensors."""
    for _name, node, theirs_node in match_layers(other, ((n.name, n) for n in module.nodes)):
        if theirs_node is None:
            continue
        mine = list(module.get_module(node.index).named_parameters())
        theirs = other.layer_blobs(theirs_node.index)
        if len(mine) != len(theirs):
            raise WeightsError(f"share_with: layer '{node.name}' has {len(mine)} blobs here and "
                               f"{len(theirs)} in the other net")
        sub = module.get_module(node.index)
        for (attr, p), q in zip(mine, theirs):
            if p.shape != q.shape:
                raise WeightsError(f"share_with: layer '{node.name}' blob '{attr}' shape {tuple(p.shape)} "
                                   f"vs {tuple(q.shape)} in the other net")
            parent = sub
            *path, leaf = attr.split(".")
            for s in path:
                parent = getattr(parent, s)
            setattr(parent, leaf, q)


def warn_zero_layers(net) -> None:
    """Warn by name about layers of a pycaffe Net about to train whose every blob is still zero: a learnable one
    learns nothing while its inputs are zero too (loss stuck at ln(C)); a frozen one (every lr_mult 0) stays zero
    for good, which for FCN's upsampling Deconvolutions means a net that outputs zeros (they need surgery's
    bilinear kernels). A learnable all-zero layer whose input is not all zero (FCN's zero-initialised score layers
    after surgery, fed by the trunk) learns normally and is not warned about. Each warning says how to initialise
    the layer (--weights, a weight_filler, surgery)."""
    zero = {layer: all(not b._param.detach().any() for b in blobs) for layer, blobs in net.params.items()}
    fed = {}  # layer -> whether some bottom may be non-zero (data, or a path through a non-zero layer)
    nonzero: Dict[str, bool] = {}
    for node in net.module.nodes:
        inp = any(nonzero.get(b, True) for b in node.bottoms) if node.bottoms else True
        fed[node.name] = inp
        out = inp and not zero.get(node.name, False)
        for t in node.tops:
            nonzero[t] = out
    for layer in net.params:
        node = net.layer_dict[layer]
        if not zero[layer]:
            continue
        lrs = [s.lr_mult for s in net.module.nodes[net._layer_names.index(layer)].param.param]
        if lrs and all(lr == 0 for lr in lrs):
            hint = ("bilinear kernels: tools/surgery.py, or netspec.authoring.surgery.interp(net)"
                    if node.type == "Deconvolution" else "--weights, or a weight_filler")
            log.warning("Layer '%s' (%s) is frozen (lr_mult 0) and all zero: it stays zero and so does "
                        "everything it feeds; initialise it (%s)", layer, node.type, hint)
        elif not fed.get(layer, True):
            log.warning("Layer '%s' (%s) has all-zero weights and all-zero inputs (every layer feeding it is "
                        "all zero too): it will learn nothing useful; initialise it or what feeds it "
                        "(--weights, a weight_filler, or surgery)", layer, node.type)
