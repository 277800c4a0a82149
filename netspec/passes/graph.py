"""Proto-to-proto net rewrites that run before building, as in Caffe's net.cpp and insert_splits.cpp.

* ``filter_net``: keep the layers whose NetStateRules the requested phase/level/stages meet (Caffe FilterNet).
* ``insert_splits``: give every blob with several consumers an explicit Split layer, named exactly as Caffe
  names it, so logs, ``net.blobs`` and written caffemodels list the same layers as Caffe.
* ``strip_splits``: the reverse, for a Caffe-written net's own layer list (a prototxt to build from).
* ``check_graph``: Caffe's wiring checks (unknown bottom, a top produced twice).
* ``add_auto_tops``: the top Caffe gives a loss layer written without one (AutoTopBlobs).
"""
from typing import Iterable, List, Optional

from ..errors import PrototxtError
from ..proto import caffe_pb2


def state_meets_rule(state: "caffe_pb2.NetState", rule: "caffe_pb2.NetStateRule") -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def net_state(net: "caffe_pb2.NetParameter", phase=None, level: Optional[int] = None,
              stages: Optional[Iterable[str]] = None) -> "caffe_pb2.NetState":
    """The NetState a net is built for: the prototxt's ``state`` overridden by the caller's choices."""
    state = type(net.state)()  # the net's own schema: a fork's caffe.proto (load_proto) has its own classes
    state.CopyFrom(net.state)
    if phase is not None:
        state.phase = phase
    if level is not None:
        state.level = level
    if stages is not None:
        del state.stage[:]
        state.stage.extend(stages)
    return state


def filter_net(net: "caffe_pb2.NetParameter", state: "caffe_pb2.NetState",
               where=lambda i: "", kept: Optional[list] = None) -> "caffe_pb2.NetParameter":
    """Keep the layers included for ``state`` (a layer may carry include rules or exclude rules, not both).

    ``kept``, when given, receives the original index of every layer kept (for file:line messages)."""
    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    out.state.CopyFrom(state)
    for i, layer in enumerate(net.layer):
        if layer.include and layer.exclude:
            raise PrototxtError(f"{where(i)}layer '{layer.name}' ({layer.type}) specifies both include "
                                "and exclude rules; use one of them")
        keep = not layer.include
        if any(state_meets_rule(state, r) for r in layer.exclude):
            keep = False
        if any(state_meets_rule(state, r) for r in layer.include):
            keep = True
        if keep:
            out.layer.add().CopyFrom(layer)
            if kept is not None:
                kept.append(i)
    return out


def split_layer_name(layer: str, blob: str, top_idx: int) -> str:
    return f"{blob}_{layer}_{top_idx}_split"


def split_blob_name(layer: str, blob: str, top_idx: int, k: int) -> str:
    return f"{blob}_{layer}_{top_idx}_split_{k}"


def _unknown_bottom(prefix: str, layer, blob: str, j: int) -> PrototxtError:
    return PrototxtError(
        f"{prefix}layer '{layer.name}' ({layer.type}): Unknown bottom blob '{blob}' (bottom index {j}); no "
        "earlier layer produces it. Check the spelling, the layer order, and include/exclude rules that may "
        "have removed its producer in this phase")


def check_graph(net: "caffe_pb2.NetParameter", where=lambda i: "") -> None:
    """Caffe's AppendBottom/AppendTop checks, with the layer and index named."""
    available = set()
    produced = {}
    for i, layer in enumerate(net.layer):
        for j, b in enumerate(layer.bottom):
            if b not in available:
                raise _unknown_bottom(where(i), layer, b, j)
        for j, t in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == t
            if t in produced and not in_place:
                raise PrototxtError(
                    f"{where(i)}layer '{layer.name}' ({layer.type}): Top blob '{t}' produced by multiple "
                    f"sources (already produced by layer '{produced[t]}'). Give the top a new name; only an "
                    "in-place layer (top == bottom at the same index) may reuse a blob name")
            produced[t] = layer.name
            available.add(t)


def insert_splits(net: "caffe_pb2.NetParameter", where=lambda i: "",
                  origin: Optional[list] = None) -> "caffe_pb2.NetParameter":
    """Insert Caffe's implicit Split layers (insert_splits.cpp), loss uses of a top counting as consumers.

    ``origin``, when given, receives for every output layer the index of the input layer it comes from
    (a Split layer maps to the layer whose top it splits)."""
    last_top = {}            # blob name -> (layer index, top index) of its latest producer
    source_of = {}           # (layer index, bottom index) -> producer (layer index, top index)
    consumers = {}           # producer (i, j) -> number of uses
    loss_weight = {}         # producer (i, j) -> explicit loss weight
    for i, layer in enumerate(net.layer):
        for j, b in enumerate(layer.bottom):
            if b not in last_top:
                raise _unknown_bottom(where(i), layer, b, j)
            src = last_top[b]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, t in enumerate(layer.top):
            last_top[t] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_top[layer.top[j]]
            loss_weight[src] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[src] = consumers.get(src, 0) + 1

    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    next_split = {}
    for i, layer in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        if origin is not None:
            origin.append(i)
        for j, b in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                new.bottom[j] = split_blob_name(net.layer[src[0]].name, b, src[1], k)
        for j, t in enumerate(layer.top):
            n = consumers.get((i, j), 0)
            if n > 1:
                split = out.layer.add()
                split.name = split_layer_name(layer.name, t, j)
                split.type = "Split"
                split.bottom.append(t)
                for k in range(n):
                    split.top.append(split_blob_name(layer.name, t, j, k))
                w = loss_weight.get((i, j), 0.0)
                if w:
                    split.loss_weight.extend([w] + [0.0] * (n - 1))
                if origin is not None:
                    origin.append(i)
    return out


def strip_splits(net: "caffe_pb2.NetParameter") -> "caffe_pb2.NetParameter":
    """The reverse of ``insert_splits`` for a Caffe-written net: a copy without the Split layers Caffe inserted
    (their consumers read the split blob again), without layer ``phase`` fields and blob stubs: a prototxt to
    build from."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    rename = {}
    for l in net.layer:
        if l.type == "Split" and len(l.bottom) == 1:
            src = rename.get(l.bottom[0], l.bottom[0])
            for t in l.top:
                rename[t] = src
            continue
        layer = out.layer.add()
        layer.CopyFrom(l)
        layer.ClearField("phase")
        del layer.blobs[:]
        for j, b in enumerate(layer.bottom):
            layer.bottom[j] = rename.get(b, b)
    return out


def add_auto_tops(net: "caffe_pb2.NetParameter") -> None:
    """Caffe's AutoTopBlobs for loss layers: a loss layer written without a top (DeepLab's prototxts do this)
    still computes its loss; Caffe gives it an anonymous top. Here the top is named as the layer (or
    ``<layer>_auto_top`` when that name is a blob already), so the loss shows in the outputs."""
    from ..registry import LAYERS
    names = {b for layer in net.layer for b in list(layer.top) + list(layer.bottom)}
    for layer in net.layer:
        entry = LAYERS.find(layer.type)
        if entry is None or not entry.loss or len(layer.top) >= max(entry.tops[0], 1):
            continue
        name = layer.name if layer.name not in names else f"{layer.name}_auto_top"
        layer.top.append(name)
        names.add(name)


def prepare_net(net: "caffe_pb2.NetParameter", phase=None, level=None, stages=None,
                where=lambda i: ""):
    """Filter for the requested state, insert Splits, check the wiring: the layer list Caffe instantiates.

    Returns ``(net, origin)`` where ``origin[i]`` is the index in the given net of output layer ``i``."""
    state = net_state(net, phase, level, stages)
    kept: List[int] = []
    filtered = filter_net(net, state, where, kept)
    add_auto_tops(filtered)
    split_origin: List[int] = []
    split = insert_splits(filtered, lambda i: where(kept[i]), split_origin)
    origin = [kept[k] for k in split_origin]
    check_graph(split, lambda i: where(origin[i]))
    return split, origin
