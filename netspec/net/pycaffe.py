"""The pycaffe-compatible Net: ``netspec.Net(proto, weights, netspec.TEST)``, ``net.blobs``, ``net.params``.

It keeps every blob where pycaffe exposes it (Split tops included, named as Caffe names them). Blob diffs
follow Caffe: an in-place blob's ``.data`` is the last in-place layer's output and its ``.diff`` the gradient
w.r.t. the first producer's output; a loss blob's ``.diff`` is its loss_weight after ``backward()``.
The fast path for training and deploy is ``net.module`` (a ``CaffeNet``), which frees blobs after use.
"""
import contextlib
import logging
import os
import pathlib
from collections import Counter, OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.autograd.graph import get_gradient_edge

from .blob import Blob, ParamBlob, clear_diff
from ..errors import NetspecError, PrototxtError, WeightsError
from ..passes.graph import prepare_net
from .caffe_net import CaffeNet
from ..proto import caffe_pb2

log = logging.getLogger("netspec")

from ..proto.caffe_pb2 import TEST, TRAIN  # noqa: E402,F401  (one definition: caffe.proto's Phase)


def load_net_param(source, *, upgrade_log: Optional[list] = None):
    """A NetParameter from a path (text prototxt or binary), text, or a message; V0/V1 files upgraded.

    Returns ``(net, where)`` where ``where(i)`` gives a ``file:line: `` prefix for layer ``i`` of ``net``."""
    from ..formats import prototxt
    from ..passes import upgrade
    lines: List[int] = []
    path = None
    if isinstance(source, caffe_pb2.NetParameter):
        net = source
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise PrototxtError(f"{path}: net file not found (working directory {os.getcwd()})")
        net, lines = prototxt.parse_net_with_lines(pathlib.Path(path))  # a path, whatever its name holds
    if upgrade.needs_upgrade(net):
        before = len(net.layer) or len(net.layers)
        net, msgs = upgrade.upgrade_net(net)
        # The upgrade keeps the layer order and may prepend an Input layer (from input:/input_dim fields,
        # which have no layer line of their own).
        added = len(net.layer) - before
        lines = [None] * added + lines if added >= 0 and len(lines) == before else []
        for m in msgs:
            log.info(m)
        if upgrade_log is not None:
            upgrade_log.extend(msgs)

    def where(i: int) -> str:
        if path is None:
            return ""
        if i < len(lines) and lines[i] is not None:
            return f"{path}:{lines[i]}: "
        return f"{path}: "
    return net, where


def _freezing():
    import torch._inductor.config as inductor
    return inductor.patch(freezing=True)


class _LazyFeed(dict):
    """The Input blobs, read from ``net.blobs`` when the Input layer runs (after before_forward hooks)."""

    def __init__(self, net, device, grad):
        super().__init__()
        self.net, self.device, self.grad = net, device, grad
        self.taken = {}
        self.channels_last = False

    def __contains__(self, name):
        return name in self.net.blobs

    def __getitem__(self, name):
        t = torch.from_numpy(self.net.blobs[name].data.copy()).to(self.device, non_blocking=True)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        t.requires_grad_(self.grad)
        self.taken[name] = t
        return t

    def items(self):
        return ((n, self[n]) for n in self.net.inputs)


class _Pass:
    """What backward() needs of the last forward: first and last version of each blob, the loss terms, each
    blob's first version's gradient edge, every version's ``(layer index, edge or leaf tensor, or None)``, and
    the layers that ran (``i0..i1``)."""

    def __init__(self, firsts, lasts, loss_terms, edges, versions, i0, i1):
        self.firsts, self.lasts, self.loss_terms, self.edges = firsts, lasts, loss_terms, edges
        self.versions, self.i0, self.i1 = versions, i0, i1


class _Layer:
    """What pycaffe's ``net.layers[i]`` offers: ``type`` and ``blobs``."""

    def __init__(self, node, blobs):
        self.type = node.type
        self.name = node.name
        self.blobs = blobs

    def __repr__(self):
        return f"<{self.type} layer '{self.name}'>"


class Net:
    """pycaffe's ``caffe.Net``.

    Accepted forms: ``Net(proto, phase)``, ``Net(proto, weights, phase)``, ``Net(proto, phase, weights=w)``,
    ``Net(proto, phase=TEST, weights=w)``; plus ``level=`` and ``stages=`` as pycaffe, and ``dialect=``: the
    Caffe fork whose meaning ambiguous layer types take (``"pspnet"``, ``"segnet"``...; default: the tools'
    ``--dialect``, else recognised from the net, see docs/caffe_forks.md); ``strict=True``: every layer with
    parameters must get weights from ``weights``.
    """

    def __init__(self, network_file, *args, phase=None, weights=None, level: int = 0, stages=None,
                 device=None, dialect=None, strict: bool = False):
        args = list(args)
        if args and isinstance(args[-1], int) and phase is None:
            phase = args.pop()
        if args and weights is None:
            weights = args.pop(0)
        if args:
            raise TypeError("Net(network_file, [weights,] phase): unexpected extra arguments")
        if phase is None:
            raise TypeError("Net needs a phase: netspec.TRAIN or netspec.TEST")
        net, where = load_net_param(network_file)
        self.source = None if isinstance(network_file, caffe_pb2.NetParameter) else os.fspath(network_file)
        prepared, origin = prepare_net(net, phase, level, stages, where)
        self.net_param = prepared
        self.module = CaffeNet(prepared, phase, lambda i: where(origin[i]), dialect=dialect)
        from . import runtime
        self.module.to(device if device is not None else runtime.device())
        log.info("Network initialization:\n%s", self.module.describe_shapes())
        self.phase = phase
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict()
        for node in self.module.nodes:
            for t, s in zip(node.tops, node.top_shapes):
                if t not in self.blobs:
                    self.blobs[t] = Blob(s)
        self.layers = []
        self._layer_names = []
        self.params: "OrderedDict[str, List[ParamBlob]]" = OrderedDict()
        for node in self.module.nodes:
            pblobs = [ParamBlob(p) for p in self.module.layer_blobs(node.index)]
            self.layers.append(_Layer(node, pblobs))
            self._layer_names.append(node.name)
            if pblobs and node.name not in self.params:
                self.params[node.name] = pblobs
        self.layer_dict = OrderedDict((l.name, l) for l in self.layers)
        self.inputs = list(self.module.input_blobs)
        self.outputs = list(self.module.output_blobs)
        # configure()'s settings: autocast dtype, channels_last feeding, the compiled module and freezing
        self._amp = None
        self._channels_last = False
        self._compiled = None
        self._freeze = False
        self._aot = None
        self._before: list = []
        self._after: list = []
        self._graph = None
        if weights:
            self.copy_from(weights, strict=strict)

    # -- pycaffe attributes ---------------------------------------------------------------------------
    @property
    def name(self):
        return self.module.name

    @property
    def top_names(self):
        return OrderedDict((n.name, list(n.tops)) for n in self.module.nodes)

    @property
    def bottom_names(self):
        return OrderedDict((n.name, list(n.bottoms)) for n in self.module.nodes)

    def before_forward(self, fn):
        self._before.append(fn)

    def after_forward(self, fn):
        self._after.append(fn)

    def _index(self, layer: Optional[str], default: int) -> int:
        if layer is None:
            return default
        try:
            return self._layer_names.index(layer)
        except ValueError:
            raise NetspecError(f"no layer named '{layer}' in net '{self.name}'") from None

    # -- running ----------------------------------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs) -> Dict[str, np.ndarray]:
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise NetspecError(f"forward(): net '{self.name}' has no blob '{name}'")
            value = np.asarray(value, dtype=np.float32)
            self.blobs[name].reshape(*value.shape)
            self.blobs[name].data[...] = value
        i0 = self._index(start, 0)
        i1 = self._index(end, len(self.module.nodes) - 1)
        # The last backward's diffs of the blobs this pass recomputes (not the net's outputs, whose diffs a user
        # may set before forward, nor the inputs') are let go now, so this pass reuses their memory instead of
        # taking fresh pages; they read as zeros until the next backward.
        for b in self._recomputed(i0, i1):
            b._diff = None
        dev = self._device()
        grad = self.module.force_backward
        env = {}
        feed = _LazyFeed(self, dev, grad)
        if i0 > 0:
            for name, b in self.blobs.items():
                env[name] = torch.from_numpy(b.data.copy()).to(dev).requires_grad_(grad)
        firsts: Dict[str, torch.Tensor] = feed.taken if i0 == 0 else dict(env)
        lasts: Dict[str, torch.Tensor] = {}
        # Where each blob's diff comes from: the autograd edge of its first version, taken before any in-place
        # layer changes the tensor (Caffe's diff of an in-place blob is the gradient w.r.t. the first producer's
        # output). backward() has autograd capture them all in one call: no Python hook per blob.
        edges: Dict[str, object] = {}
        # Every version of every blob, [(layer index, its edge, the tensor if a leaf, or None)], for a
        # backward over part of the net (backward(start=, end=)).
        versions: Dict[str, list] = {n: [(-1, v if v.requires_grad else None)] for n, v in env.items()}
        shown = set()
        loss_terms = []

        def on_top(node, j, v):
            t = node.tops[j]
            key = (node.index, j)
            edge = None
            if key not in shown:  # (else: a fused chain's result after its first version, EltwiseReLU's)
                shown.add(key)
                in_place = j < len(node.bottoms) and node.bottoms[j] == t
                if not in_place or t not in firsts:
                    if v.requires_grad and not v.is_leaf:
                        edge = edges[t] = get_gradient_edge(v)
                    firsts[t] = v
                if node.loss_weights[j]:
                    loss_terms.append((v, node.loss_weights[j]))
            lasts[t] = v
            if edge is None and v.requires_grad:
                edge = v if v.is_leaf else get_gradient_edge(v)
            versions.setdefault(t, []).append((node.index, edge))

        with torch.enable_grad():
            env, _ = self.module.run(feed, keep=True, start=i0, end=i1, env=env, on_top=on_top,
                                     before=self._call(self._before), after=self._call(self._after))
        for t, v in lasts.items():
            self.blobs[t]._set(v)
        self._graph = _Pass(firsts, lasts, loss_terms, edges, versions, i0, i1)
        return {o: self.blobs[o].data for o in self.outputs if o in lasts or i0 > 0}

    def _learnable(self, i0: int = 0, i1: Optional[int] = None) -> List[torch.Tensor]:
        """The parameters of layers i0..i1 (default: all) whose diffs a backward computes (each shared one once)."""
        return list(dict.fromkeys(b._param for layer in self.layers[i0:None if i1 is None else i1 + 1]
                                  for b in layer.blobs if b._param.requires_grad))

    def _recomputed(self, i0: int, i1: int) -> List[Blob]:
        """The blobs layers i0..i1 write, but the net's inputs and outputs (cached per range)."""
        cache = self.__dict__.setdefault("_recomputed_cache", {})
        if (i0, i1) not in cache:
            keep = set(self.outputs) | set(self.inputs)
            names = dict.fromkeys(t for node in self.module.nodes[i0:i1 + 1] for t in node.tops if t not in keep)
            cache[(i0, i1)] = [self.blobs[t] for t in names]
        return cache[(i0, i1)]

    @staticmethod
    def _call(fns):
        if not fns:
            return None

        def run(i):
            for f in fns:
                f(i)
        return run

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> Dict[str, np.ndarray]:
        """pycaffe's backward: Caffe's BackwardFromTo(start, end), from layer ``start`` (default: the last) down
        to layer ``end`` (default: the first), over the graph of the last forward. ``kwargs``: diffs to set on
        blobs first (the net's outputs, as pycaffe). Returns the diffs of the net's inputs (with ``end``: of that
        layer's bottoms), and of the blobs named in ``diffs``."""
        if self._graph is None:
            raise NetspecError("backward() needs a forward() first (the graph of the last forward is used once)")
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise NetspecError(f"backward(): net '{self.name}' has no blob '{name}'")
            self.blobs[name].diff[...] = value
        if start is None and end is None:
            self._backward_all(self._graph)
        else:
            self._backward_range(self._graph, self._index(start, len(self.module.nodes) - 1), self._index(end, 0))
        self._graph = None
        wanted = self.module.nodes[self._index(end, 0)].bottoms if end is not None else self.inputs
        return {b: self.blobs[b].diff for b in list(dict.fromkeys(list(wanted) + list(diffs or [])))}

    def _backward_all(self, p: "_Pass"):
        """Backward over the whole graph: seeded by the loss tops (their loss weights, as Caffe's loss layers' top
        diffs) and by the diffs of the net's outputs."""
        firsts, lasts, edges = p.firsts, p.lasts, p.edges
        roots, grads = [], []
        loss_tensors = {id(v) for v, _ in p.loss_terms}
        for v, w in p.loss_terms:
            if v.requires_grad:
                roots.append(v)
                grads.append(torch.full_like(v, w))
        for o in self.outputs:
            v = lasts.get(o)
            if v is None or id(v) in loss_tensors or not v.requires_grad:
                continue
            d = self.blobs[o].diff
            if np.any(d):
                roots.append(v)
                grads.append(torch.from_numpy(d.copy()).to(v.device).reshape(v.shape))
        outputs = set(self.outputs)
        for t in firsts:
            if t not in outputs:  # replaced below: let go of the last backward's diffs for autograd to reuse
                self.blobs[t]._diff = None
        # The blobs' diffs (first versions' edges; fed inputs that require grad) and every learnable parameter's
        # gradient, captured by autograd.
        names = [t for t, v in firsts.items() if t in edges or (v.is_leaf and v.requires_grad)]
        self._capture(roots, grads, names, [edges[t] if t in edges else firsts[t] for t in names],
                      self._learnable())

    def _backward_range(self, p: "_Pass", i_start: int, i_end: int):
        """Caffe's BackwardFromTo(i_start, i_end): each layer in the range turns its tops' diffs into its bottoms'
        and its parameters'. Seeds: the last version a range layer writes of each blob no later range layer
        reads, with that blob's diff as it stands (a loss top's: its loss weight); each blob a range layer reads
        gets the gradient of the version the first such layer read (Caffe's one diff per blob, overwritten)."""
        nodes = self.module.nodes
        if i_end > i_start:
            raise NetspecError(f"backward(start='{nodes[i_start].name}', end='{nodes[i_end].name}'): start must "
                               "not come before end (backward runs from start down to end)")
        if not p.i0 <= i_end <= i_start <= p.i1:
            raise NetspecError(f"backward(start='{nodes[i_start].name}', end='{nodes[i_end].name}'): the last "
                               f"forward ran layers '{nodes[p.i0].name}' to '{nodes[p.i1].name}'; backward "
                               "can only run over layers the last forward ran")
        self._check_not_inside_chain(p, i_start, i_end)
        first_read: Dict[str, int] = {}
        last_read: Dict[str, int] = {}
        last_write: Dict[str, tuple] = {}
        for i in range(i_end, i_start + 1):
            node = nodes[i]
            for b in node.bottoms:
                first_read.setdefault(b, i)
                last_read[b] = i
            for j, t in enumerate(node.tops):
                last_write[t] = (i, j)
        roots, grads = [], []
        for t, (i, j) in last_write.items():
            if last_read.get(t, -1) > i:
                continue  # read again inside the range: its gradient comes from there
            edge = _version(p.versions.get(t, ()), i)
            if edge is None:
                continue
            w = nodes[i].loss_weights[j]
            d = self.blobs[t].diff
            if not w and not np.any(d):
                continue
            dev = p.lasts[t].device
            g = torch.full(self.blobs[t].shape, float(w)) if w else torch.from_numpy(d.copy())
            roots.append(edge)
            grads.append(g.to(dev).reshape(p.lasts[t].shape))
        names, inputs = [], []
        for b, i in first_read.items():
            edge = _version(p.versions.get(b, ()), i - 1)
            if edge is not None:
                names.append(b)
                inputs.append(edge)
        self._capture(roots, grads, names, inputs, self._learnable(i_end, i_start))

    def _check_not_inside_chain(self, p: "_Pass", i_start: int, i_end: int):
        """A layer chain the last forward ran as one fused module (netspec.net.fold.train_plan) has no inner
        versions to start or end a backward at."""
        nodes = self.module.nodes
        if not (self.module.fuse and p.i0 == 0 and p.i1 == len(nodes) - 1 and not self._before and not self._after):
            return
        heads, absorbed = self.module._train_plan(True)
        for h in heads:
            last = h
            while last + 1 in absorbed:
                last += 1
            if h < i_end <= last or h <= i_start < last:
                raise NetspecError(
                    f"backward(start='{nodes[i_start].name}', end='{nodes[i_end].name}'): layers "
                    f"'{nodes[h].name}' to '{nodes[last].name}' ran as one fused module, which has no versions of "
                    f"its top in between: start at '{nodes[last].name}', end at '{nodes[h].name}', or set "
                    "net.module.fuse = False before forward()")

    def _capture(self, roots, grads, names, inputs, params):
        """Autograd from ``roots`` (tensors or gradient edges) seeded with ``grads``: the gradients at ``inputs``
        become the diffs of the blobs ``names``, those of ``params`` are added to their diffs (Caffe's Backward
        accumulates), or handed over where the diff was cleared (netspec.net.blob.clear_diff)."""
        gs = ()
        if roots:
            gs = torch.autograd.grad(roots, list(inputs) + params, grads, allow_unused=True)
        got = [(self.blobs[t], g.detach()) for t, g in zip(names, gs) if g is not None]
        # (a blob without a gradient: zeros when read (Blob.diff), or for an output nothing back-propagates
        # through, the diff the user wrote (as Caffe))
        # Autograd may hand one tensor to several blobs (a sum's bottoms get the sum's gradient) or an expanded
        # one; each blob's diff must be its own writable CPU float32 array, so those (and a GPU's) are lent to the
        # blob: Blob.diff copies them when first read.
        holders = Counter(g.untyped_storage().data_ptr() for _, g in got)
        for b, g in got:
            b._diff = g
            b._diff_lent = (holders[g.untyped_storage().data_ptr()] > 1 or not g.is_contiguous()
                            or g.device.type != "cpu" or g.dtype != torch.float32)
        if gs:
            _accumulate(params, gs[len(names):], holders)

    # -- fast paths (solver, test nets): blobs freed after use, only outputs kept ---------------------------
    def loss_outputs(self):
        """[(output blob, loss weight)] for the net outputs that carry a loss weight."""
        weights = {}
        for node in self.module.nodes:
            for t, w in zip(node.tops, node.loss_weights):
                if w:
                    weights[t] = w
        return [(o, weights[o]) for o in self.outputs if o in weights]

    def _device(self):
        return next((p.device for p in self.module.parameters()), torch.device("cpu"))

    def _feed(self, grad=False):
        return _LazyFeed(self, self._device(), grad)

    def _keep_outputs(self, env, retain=()):
        for o in list(self.outputs) + list(retain):
            if o in env:
                self.blobs[o]._set(env[o].float())

    def configure(self, precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                  checkpoint: bool = False, freeze: bool = False, cache_dir=None):
        """Speed settings of the fast paths: autocast precision, NHWC activations, torch.compile, and
        activation checkpointing (training keeps ~sqrt(n) blobs for backward and recomputes the rest: less
        memory for large inputs, about one more forward of compute).

        ``freeze`` (with ``compile``): inference without autograd compiles with the weights folded in as
        constants (inductor's freezing: pre-packed oneDNN convolutions on CPU). Only for a net whose weights no
        longer change: load them first, and never freeze a net that shares weights with a training net.
        Frozen inference is compiled ahead of time (torch.export + AOTInductor) into a package per input
        shape, kept under ``cache_dir`` (default ``$NETSPEC_CACHE_DIR/compiled`` or ``~/.cache/netspec/compiled``;
        netspec.net.compile_cache) and loaded by later runs without tracing; ``cache_dir=False``: torch.compile
        only. A net that torch.export or AOTInductor cannot take falls back to torch.compile (one warning)."""
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise NetspecError(f"precision {precision!r}: use fp32, bf16 or fp16")
        self._amp = dtypes[precision]
        self._channels_last = channels_last
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.module.checkpoint = checkpoint
        if freeze and not compile:
            raise NetspecError("freeze=True needs compile=True (freezing is a torch.compile setting)")
        self._freeze = freeze
        self._compiled = torch.compile(self.module) if compile else None
        self._aot = None
        if compile and freeze and cache_dir is not False:
            from .compile_cache import AotCache
            self._aot = AotCache(self, cache_dir)

    def _autocast(self):
        amp = self._amp
        if amp is None:
            return contextlib.nullcontext()
        dev = next((p.device.type for p in self.module.parameters()), "cpu")
        return torch.autocast(dev, dtype=amp)

    def _run_fast(self, retain=(), fold: bool = False):
        feed = self._feed()
        feed.channels_last = self._channels_last
        with self._autocast():
            compiled = self._compiled
            if (compiled is not None and not self._before and not self._after
                    and set(retain) <= set(self.module.output_blobs)):
                frozen = self._freeze and not torch.is_grad_enabled()
                inputs = {n: feed[n] for n in self.inputs}
                run = self._aot.runner(inputs) if frozen and self._aot is not None else None
                if run is not None:
                    env = dict(run(inputs))
                else:
                    with _freezing() if frozen else contextlib.nullcontext():
                        env = dict(compiled(inputs))
                loss = env.pop("__loss__", None)
            else:
                env, loss = self.module.run(feed, before=self._call(self._before),
                                            after=self._call(self._after), retain=retain,
                                            fold=fold and not self._before and not self._after)
        return env, loss

    def forward_backward(self, loss_scale: float = 1.0) -> float:
        """One training pass: forward, backward into the param grads (accumulating). Returns the loss."""
        with torch.enable_grad():
            env, loss = self._run_fast()
        if loss is None:
            raise NetspecError(f"net '{self.name}' has no loss (no top with a loss_weight) to train on")
        if loss.requires_grad:
            (loss.float() * loss_scale if loss_scale != 1.0 else loss).backward()
        self._keep_outputs(env)
        return float(loss.detach())

    def forward_only(self, retain=(), fold: bool = True) -> Dict[str, np.ndarray]:
        """Forward without autograd, keeping only the outputs and the blobs named in ``retain``. ``fold``:
        Convolution -> BatchNorm -> Scale chains run as one convolution (netspec.net.fold; same outputs to float32
        rounding)."""
        with torch.no_grad():
            env, _ = self._run_fast(retain, fold=fold)
        self._keep_outputs(env, retain)
        return {o: self.blobs[o].data for o in self.outputs}

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: feed the net's MemoryData layer."""
        from ..layers.data import set_input_arrays
        set_input_arrays(self, data, labels)

    def clear_param_diffs(self):
        """Caffe's ClearParamDiffs: every parameter diff reads as zeros (netspec.net.blob.clear_diff)."""
        for layer in self.layers:
            for b in layer.blobs:
                clear_diff(b._param)

    def reshape(self):
        """Propagate the current input blob shapes through the net (Caffe's Net::Reshape)."""
        from .caffe_net import infer_top_shapes
        from ..registry import LAYERS
        shapes = {n: self.blobs[n].shape for n in self.inputs}
        for node in self.module.nodes:
            module = self.module.get_module(node.index)
            if getattr(module, "is_input", False):
                continue
            tshapes = infer_top_shapes(module, [shapes[b] for b in node.bottoms], LAYERS.get(node.type),
                                       len(node.tops))
            for t, s in zip(node.tops, tshapes):
                shapes[t] = s
                self.blobs[t].reshape(*s)

    # -- weights ----------------------------------------------------------------------------------------
    def copy_from(self, weights, strict: bool = False):
        """Copy trained layers by name, as Caffe's CopyTrainedLayersFrom (comma-separated paths allowed). Layers
        with parameters that no file fills are logged at WARNING (``strict``: an error)."""
        from . import runtime
        from .weights import copy_trained_layers, report_unloaded
        copied = []
        for path in str(weights).split(","):
            copied += copy_trained_layers(self.module, path.strip())
        report_unloaded(self.module, copied, str(weights), strict or runtime.strict_weights())

    def save(self, path):
        from .weights import save_caffemodel
        if os.path.isdir(path):
            raise WeightsError(f"{path}: is a directory; give the .caffemodel file to write")
        save_caffemodel(self.module, self.net_param, path)

    def share_with(self, other: "Net"):
        """Use ``other``'s parameter tensors in this net (pycaffe's share_with / ShareTrainedLayersWith)."""
        from .weights import share_trained_layers
        share_trained_layers(self.module, other.module)
        for layer in self.layers:
            idx = self._layer_names.index(layer.name)
            layer.blobs[:] = [ParamBlob(p) for p in self.module.layer_blobs(idx)]
            if layer.name in self.params:
                self.params[layer.name] = layer.blobs


def _accumulate(params: List[torch.Tensor], grads, blob_diffs: Counter) -> None:
    """Caffe's parameter diff accumulation: each gradient added to its parameter's ``.grad`` (one
    ``_foreach_add_``), or, where there is none (a cleared diff), handed over when it has the parameter's layout
    and no blob diff (``blob_diffs``: their storages) or other parameter holds its memory; else copied."""
    into, add, taken = [], [], set()
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is None:
                continue
            if p.grad is not None:
                into.append(p.grad)
                add.append(g)
                continue
            key = g.untyped_storage().data_ptr()
            if (key in blob_diffs or key in taken or g.stride() != p.stride() or g.dtype != p.dtype
                    or g.device != p.device):
                g = torch.empty_like(p).copy_(g)
                key = g.untyped_storage().data_ptr()
            taken.add(key)
            p.grad = g
        if into:
            torch._foreach_add_(into, add)


def _version(versions, upto: int):
    """The edge (or leaf tensor) of the latest of a blob's ``versions`` written by a layer at index <= ``upto``;
    None when there is none or it does not require grad."""
    for i, edge in reversed(versions):
        if i <= upto:
            return edge
    return None
