"""BatchNorm folding for deploy nets: a proto-and-blobs rewrite of Convolution / Deconvolution / InnerProduct ->
BatchNorm (-> Scale) chains into the one layer, with folded weights (what ``convert --fold-bn`` writes).

Unlike ``netspec/net/fold.py``, which runs such chains folded inside a built net and leaves its definition and
parameters alone, this pass returns a new NetParameter without the BatchNorm and Scale layers and the new
``[weight, bias]`` blobs of the layers that absorbed them. Torch-free: numpy arrays in Caffe's blob order.

Per output channel c (docs/porting_weights.md, "BatchNorm folding"), with s the scale-factor blob
(factor = 0 if s == 0 else 1/s), mean_c = blobs[0][c] * factor, var_c = blobs[1][c] * factor:

    a_c  = gamma_c / sqrt(var_c + eps)        (gamma_c = 1 without a Scale)
    W'_c = a_c * W_c,   b'_c = a_c * (b_c - mean_c) + beta_c

computed in float64, stored as float32.
"""
import dataclasses
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..proto import caffe_pb2

#: Layer types a BatchNorm folds into.
FOLD_INTO = ("Convolution", "Deconvolution", "InnerProduct")

Blobs = Mapping[str, Sequence[np.ndarray]]


@dataclasses.dataclass
class Chain:
    """One foldable chain: layer ``into`` absorbs the layers ``removed`` (the BatchNorm, then a Scale) and
    writes ``top``, the blob the last of them wrote; its output becomes ``a * y + c`` per channel."""

    into: int
    removed: List[int]
    top: str
    a: np.ndarray
    c: np.ndarray


class Folded(NamedTuple):
    """What :func:`fold` returns: the new net; ``(name, type, [weight, bias])`` of every layer that absorbed a
    chain, in net order; the names of the removed layers; why each BatchNorm left alone stayed."""

    net: caffe_pb2.NetParameter
    absorbed: List[Tuple[str, str, List[np.ndarray]]]
    folded: List[str]
    skipped: List[str]


class _Wiring:
    """Blob versions: ``producer[i][j]`` is the index of the layer whose output bottom j of layer i reads (-1
    for a blob no layer wrote); ``readers[(blob, producer)]`` the layers reading that version."""

    def __init__(self, layers):
        current: Dict[str, int] = {}
        self.readers: Dict[Tuple[str, int], List[int]] = {}
        self.producer: List[List[int]] = []
        for i, l in enumerate(layers):
            versions = []
            for b in l.bottom:
                v = current.get(b, -1)
                self.readers.setdefault((b, v), []).append(i)
                versions.append(v)
            self.producer.append(versions)
            for t in l.top:
                current[t] = i


def _why_not(layers, i: int, wiring: _Wiring, removed: Dict[int, int], blobs: Blobs) -> Optional[str]:
    """Why BatchNorm ``layers[i]`` cannot fold into the layer before it; None when it can."""
    bn = layers[i]
    p = wiring.producer[i][0]
    prev = layers[p] if p >= 0 else None
    if prev is None or prev.type not in FOLD_INTO or p in removed:
        return f"its input '{bn.bottom[0]}' does not come from a Convolution, Deconvolution or InnerProduct"
    if len(prev.top) != 1 or len(prev.bottom) != 1:
        return f"'{prev.name}' has {len(prev.bottom)} bottoms / {len(prev.top)} tops"
    if wiring.readers.get((bn.bottom[0], p)) != [i]:
        others = [layers[k].name for k in wiring.readers.get((bn.bottom[0], p), []) if k != i]
        return f"'{bn.bottom[0]}' from '{prev.name}' is also read by {', '.join(others)}"
    if bn.batch_norm_param.HasField("use_global_stats") and not bn.batch_norm_param.use_global_stats:
        return "use_global_stats is false (batch statistics)"
    if bn.name not in blobs or prev.name not in blobs:
        return f"no weights for '{bn.name if bn.name not in blobs else prev.name}'"
    if prev.type != "InnerProduct" and prev.convolution_param.axis != 1:
        return f"'{prev.name}' has channel axis {prev.convolution_param.axis}"
    if prev.type == "InnerProduct" and prev.inner_product_param.axis != 1:
        return f"'{prev.name}' has axis {prev.inner_product_param.axis}"
    return None


def _batchnorm_factors(bn, arrays) -> Tuple[np.ndarray, np.ndarray]:
    """``(a, c)`` with BatchNorm(y) = a * y + c per channel, from Caffe's three blobs (float64)."""
    bw = [np.asarray(x, np.float64).reshape(-1) for x in arrays]
    s = bw[2][0]
    factor = 0.0 if s == 0 else 1.0 / s
    mean, var = bw[0] * factor, bw[1] * factor
    a = 1.0 / np.sqrt(var + bn.batch_norm_param.eps)
    return a, -mean * a


def _absorb_scale(layers, i: int, wiring: _Wiring, blobs: Blobs, chain: Chain) -> None:
    """Extend ``chain`` (ending at BatchNorm ``i``) with the channel-wise Scale that alone reads its output."""
    bn = layers[i]
    readers = wiring.readers.get((bn.top[0], i), [])
    if len(readers) != 1:
        return
    k = readers[0]
    sc = layers[k]
    sp = sc.scale_param
    if not (sc.type == "Scale" and len(sc.bottom) == 1 and len(sc.top) == 1 and sc.name in blobs
            and sp.axis in (1, -3) and sp.num_axes == 1):
        return
    sw = [np.asarray(x, np.float64).reshape(-1) for x in blobs[sc.name]]
    gamma = sw[0]
    beta = sw[1] if sp.bias_term and len(sw) > 1 else np.zeros_like(gamma)
    if gamma.shape == chain.a.shape:
        chain.a, chain.c = chain.a * gamma, chain.c * gamma + beta
        chain.top = sc.top[0]
        chain.removed.append(k)


def _output_channels(layer) -> int:
    if layer.type == "InnerProduct":
        return layer.inner_product_param.num_output
    return layer.convolution_param.num_output


def find_chains(net: caffe_pb2.NetParameter, blobs: Blobs) -> Tuple[Dict[int, Chain], List[str]]:
    """The foldable chains of ``net`` by the index of the layer they fold into, and why each other
    single-bottom, single-top BatchNorm stays."""
    layers = list(net.layer)
    wiring = _Wiring(layers)
    removed: Dict[int, int] = {}   # removed layer index -> layer it was folded into
    chains: Dict[int, Chain] = {}
    skipped: List[str] = []
    for i, bn in enumerate(layers):
        if bn.type != "BatchNorm" or len(bn.bottom) != 1 or len(bn.top) != 1:
            continue
        why = _why_not(layers, i, wiring, removed, blobs)
        if why:
            skipped.append(f"{bn.name}: {why}")
            continue
        if len(blobs[bn.name]) != 3:
            skipped.append(f"{bn.name}: expected 3 blobs (mean, variance, scale factor), found {len(blobs[bn.name])}")
            continue
        p = wiring.producer[i][0]
        chain = Chain(p, [i], bn.top[0], *_batchnorm_factors(bn, blobs[bn.name]))
        _absorb_scale(layers, i, wiring, blobs, chain)
        out_ch = _output_channels(layers[p])
        if out_ch != chain.a.size:
            skipped.append(f"{bn.name}: '{layers[p].name}' has {out_ch} output channels, the BatchNorm {chain.a.size}")
            continue
        for k in chain.removed:
            removed[k] = p
        chains[p] = chain
    return chains, skipped


def fold_arrays(layer, arrays, a: np.ndarray, c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scale the output channels of a layer's weight by ``a``; bias' = a * bias + c (float32 results)."""
    w = np.asarray(arrays[0], np.float64)
    shape = w.shape
    n = a.size
    if layer.type == "InnerProduct":
        w2 = w.reshape(-1, n) if layer.inner_product_param.transpose else w.reshape(n, -1)
        w2 = w2 * (a[None, :] if layer.inner_product_param.transpose else a[:, None])
    elif layer.type == "Convolution":
        w2 = w.reshape(n, -1) * a[:, None]
    else:  # Deconvolution: (C_in, C_out/group, *k); output channel of w[i, j] is g*(C_out/group) + j
        group = max(1, layer.convolution_param.group)
        cin = shape[0]
        w2 = w.reshape(group, cin // group, n // group, -1) * a.reshape(group, 1, n // group, 1)
    bias = (np.asarray(arrays[1], np.float64).reshape(-1) if len(arrays) > 1 else np.zeros(n))
    return (np.ascontiguousarray(w2.reshape(shape), np.float32),
            np.ascontiguousarray(a * bias + c, np.float32))


def rewrite(net: caffe_pb2.NetParameter, blobs: Blobs, chains: Dict[int, Chain]
            ) -> Tuple[caffe_pb2.NetParameter, List[Tuple[str, str, List[np.ndarray]]], List[str]]:
    """``net`` without the chains' removed layers, each absorbing layer writing its chain's top with
    ``bias_term: true``; its new blobs; the names of the removed layers."""
    removed = {k for chain in chains.values() for k in chain.removed}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    absorbed, folded = [], []
    for i, l in enumerate(net.layer):
        if i in removed:
            folded.append(l.name)
            continue
        layer = out.layer.add()
        layer.CopyFrom(l)
        if i in chains:
            chain = chains[i]
            layer.top[0] = chain.top
            w, b = fold_arrays(l, blobs[l.name], chain.a, chain.c)
            if l.type == "InnerProduct":
                layer.inner_product_param.bias_term = True
            else:
                layer.convolution_param.bias_term = True
            absorbed.append((l.name, l.type, [w, b]))
    return out, absorbed, folded


def fold(net: caffe_pb2.NetParameter, blobs: Blobs) -> Folded:
    """Fold every foldable BatchNorm (and the Scale right after it) of ``net`` into the Convolution,
    Deconvolution or InnerProduct before it. ``blobs``: layer name -> its Caffe blobs. The inputs are
    left untouched."""
    chains, skipped = find_chains(net, blobs)
    if not chains:
        out = caffe_pb2.NetParameter()
        out.CopyFrom(net)
        return Folded(out, [], [], skipped)
    out, absorbed, folded = rewrite(net, blobs, chains)
    return Folded(out, absorbed, folded, skipped)
