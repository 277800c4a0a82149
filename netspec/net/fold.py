"""Inference folding: Convolution -> BatchNorm (global statistics) -> Scale/Bias chains run as one convolution.

A graph-level pass for the frozen, gradient-free fast path (``Net.forward_only``, the tools' inference): a chain
of in-place layers on a convolution's top (Caffe's ResNet pattern ``conv -> BatchNorm -> Scale``, each with
``top == bottom``) changes only that blob, and Caffe overwrites its intermediate values anyway, so the chain can
run as the convolution with folded weights. Per output channel c, with Caffe's BatchNorm
(mean = mean_acc / s, var = var_acc / s, s the scale factor; 0 when s is 0) and Scale (gamma, beta):

    k_c = gamma_c / sqrt(var_c + eps)
    W'_c = W_c * k_c,   b'_c = (b_c - mean_c) * k_c + beta_c

(a Bias adds to b', a Scale without BatchNorm has k_c = gamma_c). Outputs agree with the unfolded layers to
float32 rounding (tests/net/test_fold.py checks 1e-5). The folded weights are recomputed whenever a parameter of the
chain may have changed (torch's version counters, and any numpy view handed out by pycaffe's ``net.params``), so
training and weight surgery between calls stay visible.
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

#: Types a chain may absorb, after a Convolution (BN: the PSPNet / SegNet forks' layer, through its affine()).
_FOLDABLE = ("BatchNorm", "Scale", "Bias", "BN")


def _absorbable(node, module) -> bool:
    if node.type == "BatchNorm":
        return bool(module.use_global_stats)
    if node.type == "BN":
        return module.affine() is not None
    # Scale / Bias: own per-channel blobs on axis 1 (not a second bottom)
    v = module.weight if node.type == "Scale" else module.bias
    return len(node.bottoms) == 1 and module.axis == 1 and v is not None and v.dim() == 1


def plan(net) -> Tuple[Dict[int, "FoldedConv"], set]:
    """({conv node index: FoldedConv}, indices of the absorbed nodes) for a CaffeNet."""
    heads, absorbed = {}, set()
    nodes = net.nodes
    for i, node in enumerate(nodes):
        conv = net.get_module(node.index)
        if (node.type != "Convolution" or len(node.tops) != 1 or len(node.bottoms) != 1 or conv.axis != 1
                or conv.transposed or conv.weight.dim() != 4 or any(node.loss_weights)):
            continue
        t, chain = node.tops[0], []
        for nxt in nodes[i + 1:]:
            m = net.get_module(nxt.index)
            if (nxt.type not in _FOLDABLE or nxt.bottoms != [t] or nxt.tops != [t] or any(nxt.loss_weights)
                    or not _absorbable(nxt, m)):
                break
            chain.append((nxt.type, m))
        if chain:
            heads[node.index] = FoldedConv(conv, chain)
            absorbed.update(n.index for n in nodes[i + 1:i + 1 + len(chain)])
    return heads, absorbed


class FoldedConv(nn.Module):
    """A Convolution and the BatchNorm/Scale/Bias layers after it, as one convolution (see the module doc)."""

    def __init__(self, conv, chain: List):
        super().__init__()
        self.conv, self.chain = conv, chain
        self._key, self._wb = None, None

    def _params(self):
        out = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        for _, m in self.chain:
            out += [p for p in m.parameters() if p is not None]
        return out

    def _folded(self):
        from ..net.blob import numpy_views
        params = self._params()
        key = (numpy_views[0],) + tuple((id(p), p._version, p.device, p.dtype) for p in params)
        if key != self._key:
            with torch.no_grad():
                w = self.conv.weight.detach().double()
                b = (self.conv.bias.detach().double() if self.conv.bias is not None
                     else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
                for kind, m in self.chain:
                    if kind == "BatchNorm":
                        sf = m.scale_factor.detach().double()
                        inv = torch.where(sf == 0, torch.zeros_like(sf), 1 / sf)
                        mean, var = m.mean.detach().double() * inv, m.variance.detach().double() * inv
                        k = 1 / torch.sqrt(var + m.eps)
                        w, b = w * k.reshape(-1, 1, 1, 1), (b - mean) * k
                    elif kind == "Scale":
                        g = m.weight.detach().double()
                        w, b = w * g.reshape(-1, 1, 1, 1), b * g
                        if m.bias is not None:
                            b = b + m.bias.detach().double()
                    elif kind == "BN":  # the forks' BN with stored statistics: y = k x + c per channel
                        k, c = (v.detach().double() for v in m.affine())
                        w, b = w * k.reshape(-1, 1, 1, 1), b * k + c
                    else:  # Bias
                        b = b + m.bias.detach().double()
                dtype = self.conv.weight.dtype
                self._wb = (w.to(dtype).contiguous(memory_format=_memory_format(self.conv.weight)), b.to(dtype))
            self._key = key
        return self._wb

    def forward(self, x):
        w, b = self._folded()
        c = self.conv
        return torch.nn.functional.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


def _memory_format(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


# -- training pass: fused BatchNorm -> Scale -> ReLU and Eltwise SUM -> ReLU chains -----------------------------

def _chain(nodes, i, t, accept):
    """The nodes after ``nodes[i]`` that ``accept`` and run in place on blob ``t`` (one bottom, one top, both
    ``t``; no loss weight; gradient propagated), in prototxt order, stopping at the first that does not."""
    out = []
    for nxt in nodes[i + 1:]:
        if nxt.bottoms != [t] or nxt.tops != [t] or any(nxt.loss_weights) or not all(nxt.propagate_down):
            break
        if not accept(nxt, len(out)):
            break
        out.append(nxt)
    return out


def _plain_relu(m) -> bool:
    return type(m) is nn.ReLU


def train_plan(net, in_place_heads_only: bool = False, stats: "StatsBatch" = None) -> Tuple[Dict[int, nn.Module], set]:
    """({head node index: fused module}, indices of the absorbed nodes) for running a CaffeNet with autograd.

    * BatchNorm -> Scale (per-channel blobs on axis 1) [-> ReLU], each after the BatchNorm in place on its top:
      one torch batch_norm kernel with the Scale's gamma and beta as its affine part, then relu_ on its own
      fresh output (``BatchNormScaleReLU``).
    * Eltwise SUM -> ReLU in place on its top: the sum, then relu_ on it (``EltwiseReLU``; it shows the sum,
      the blob's first version, to its ``on_first`` before the relu_, so it is fused for pycaffe's forward too).
    * Split (not for pycaffe's forward): the bottom tensor itself as every top (``SameTensor``).

    Only the chain's last value of the blob stays visible, as in Caffe, where in-place layers overwrite it.
    ``in_place_heads_only`` (pycaffe's forward, which keeps the first version of every blob for its diff): only
    chains whose head also runs in place (the BatchNorm on its convolution's top), so every first version and
    its gradient is unchanged. ``stats``: the fused BatchNorms leave their accumulator updates to it (the
    caller flushes it after the pass)."""
    heads, absorbed = {}, set()
    nodes = net.nodes
    i = 0
    while i < len(nodes):
        node = nodes[i]
        m = net.get_module(node.index)
        fused, chain = None, []
        if node.type == "Split" and not in_place_heads_only and not any(node.loss_weights):
            fused = SameTensor(len(node.tops))
        elif (len(node.tops) == 1 and not any(node.loss_weights)
                and (not in_place_heads_only or node.bottoms[:1] == node.tops or node.type == "Eltwise")):
            t = node.tops[0]
            if node.type == "BatchNorm" and len(node.bottoms) == 1:
                def accept(nxt, k):
                    mm = net.get_module(nxt.index)
                    if k == 0:
                        return (nxt.type == "Scale" and mm.axis == 1 and mm.weight is not None
                                and mm.weight.dim() == 1 and mm.weight.shape == m.mean.shape)
                    return k == 1 and nxt.type == "ReLU" and _plain_relu(mm)
                chain = _chain(nodes, i, t, accept)
                if chain:
                    fused = BatchNormScaleReLU(m, net.get_module(chain[0].index),
                                               net.get_module(chain[1].index) if len(chain) > 1 else None, stats)
            elif node.type == "Eltwise" and m.op == "SUM":
                chain = _chain(nodes, i, t, lambda nxt, k: k == 0 and nxt.type == "ReLU"
                               and _plain_relu(net.get_module(nxt.index)))
                if chain:
                    fused = EltwiseReLU(m, net.get_module(chain[0].index))
        if fused is not None:
            heads[node.index] = fused
            absorbed.update(n.index for n in chain)
            i += len(chain)
        i += 1
    return heads, absorbed


class BatchNormScaleReLU(nn.Module):
    """Caffe's BatchNorm, the Scale after it and optionally a ReLU as one batch_norm kernel (the Scale's gamma
    and beta its affine part) and an in-place relu_ on that kernel's own output. Same formulas as the three
    layers (tests/net/test_train_fusion.py checks them against Caffe's); inputs the kernel does not take (see
    ``BatchNorm._fused_ok``) run the three layers."""

    def __init__(self, bn, scale, relu=None, stats=None):
        super().__init__()
        self.bn, self.scale, self.relu = bn, scale, relu
        self.__dict__["stats"] = stats  # shared by the plan's chains, not a submodule

    def forward(self, x):
        if not self.bn._fused_ok(x):
            y = self.scale(self.bn(x))
            return y if self.relu is None else self.relu(y)
        y = self.bn.fused(x, self.scale.weight, self.scale.bias, defer=self.stats)
        return y if self.relu is None else y.relu_()


class StatsBatch:
    """Caffe's BatchNorm accumulator updates of one pass (scale_factor = maf * scale_factor + 1, mean = maf * mean
    + batch mean, variance = maf * variance + corrected batch variance), applied by ``flush()`` for every
    BatchNorm at once: six multi-tensor ops instead of six small ops per layer."""

    def __init__(self):
        self.pending = []

    def add(self, bn, mean, var):
        self.pending.append((bn, mean, var))

    def clear(self):
        self.pending.clear()

    def flush(self):
        if not self.pending:
            return
        bns, means, variances = zip(*self.pending)
        mafs = [bn.maf for bn in bns]
        with torch.no_grad():
            factors = [bn.scale_factor for bn in bns]
            torch._foreach_mul_(factors, mafs)
            torch._foreach_add_(factors, 1.0)
            for blobs, batch in (([bn.mean for bn in bns], means), ([bn.variance for bn in bns], variances)):
                torch._foreach_mul_(blobs, mafs)
                torch._foreach_add_(blobs, list(batch))
        self.pending.clear()


class SameTensor(nn.Module):
    """Split in the fast path: every top is the bottom tensor itself (autograd sums the tops' gradients); the
    per-top views pycaffe needs for per-top diffs cost a view op and a backward node each."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        return (x,) * self.n


class EltwiseReLU(nn.Module):
    """Eltwise SUM and the ReLU after it: relu_ on the sum's own output (a new tensor whose gradient does not
    need it). ``on_first`` (set by CaffeNet._run_nodes for an observed run) is called with the sum before the
    relu_: the gradient edge taken then (torch.autograd.graph.get_gradient_edge) still leads to the sum's gradient
    after the relu_ has changed the tensor in place, which is Caffe's diff of the blob."""

    shows_first = True

    def __init__(self, eltwise, relu):
        super().__init__()
        self.eltwise, self.relu = eltwise, relu
        self.on_first = None

    def forward(self, *xs):
        y = self.eltwise(*xs)
        if self.on_first is not None:
            self.on_first(y)
        return y.relu_()
