"""CaffeNet: a prepared NetParameter built into one ``nn.Module`` and run like ``torch.fx.Interpreter``.

Layers run in prototxt order over a dict of named blobs. A Caffe in-place layer (top == bottom) rebinds the
name to its output, so autograd stays safe and the next reader sees the new value. The fast path
(``forward``) frees every blob after its last reader; the pycaffe ``Net`` asks to keep them all.

Submodules are named by their Caffe layer names (``conv1.weight``), escaped reversibly where ``nn.Module``
forbids a name (see ``module_key``), so weights map name for name. A layer's Caffe blobs are its module's
parameters in registration order (Convolution: weight, bias; BatchNorm: mean, variance, scale factor).
"""
import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .. import layers as _layers  # noqa: F401  (registers every builder)
from ..errors import LayerError, NetspecError
from ..proto import caffe_pb2
from ..registry import LAYERS

log = logging.getLogger("netspec")


INT_MAX = 2 ** 31 - 1

class _TooBig(Exception):
    def __init__(self, shape, count):
        super().__init__(f"{shape}: {count} elements")
        self.shape, self.count = shape, count


class _AllocationGuard(TorchDispatchMode):
    """Refuses, before any memory is taken, a tensor of more than INT_MAX elements made while a layer is
    built (Caffe's ``Blob::Reshape`` check): a prototxt asking for a 10^12-element weight must fail with a
    LayerError, not allocate (and fill) gigabytes."""

    _size_index: Dict[object, Optional[int]] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps __torch_dispatch__ in torch._dynamo.disable unless this says no, importing
        # torch._dynamo (0.9 s) on the first Net(); the guard only runs while layers are built, never compiled.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        idx = self._size_index.get(func, -1)
        if idx == -1:
            names = [a.name for a in func._schema.arguments]
            idx = self._size_index[func] = names.index("size") if "size" in names else None
        if idx is not None:
            size = args[idx] if idx < len(args) else kwargs.get("size")
            if isinstance(size, (list, tuple)) and all(isinstance(d, int) for d in size):
                count = math.prod(size)
                if count > INT_MAX:
                    raise _TooBig(tuple(size), count)
        return func(*args, **kwargs)


def describe(arity: Tuple[int, Optional[int]]) -> str:
    """A registry arity ((min, max), max None = unbounded) in words."""
    lo, hi = arity
    if lo == hi:
        return str(lo)
    return f"at least {lo}" if hi is None else f"{lo} to {hi}"


def accepts(arity: Tuple[int, Optional[int]], n: int) -> bool:
    lo, hi = arity
    return n >= lo and (hi is None or n <= hi)


def module_key(name: str) -> str:
    """Reversible escape of a Caffe layer name into a legal ``nn.Module`` child name."""
    return name.replace("%", "%25").replace(".", "%2E") or "%00"


def layer_name(key: str) -> str:
    return "" if key == "%00" else key.replace("%2E", ".").replace("%25", "%")


def _blank_param_spec(layer):
    """A default ParamSpec of ``layer``'s own schema (the bundled caffe.proto or a fork's, see load_proto)."""
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(layer.DESCRIPTOR.fields_by_name["param"].message_type)()


class LearnableParam(NamedTuple):
    """One of Caffe's learnable blobs, with its ParamSpec multipliers and where it comes from."""
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    layer: str
    index: int  # blob index within the layer


@dataclass
class BuildContext:
    """What a builder may know besides its LayerParameter."""
    phase: int
    where: str = ""
    #: The Caffe fork whose meaning a type name takes where forks disagree ("pspnet", "segnet", ...; see
    #: netspec/formats/dialects.py), or None for BVLC / not yet decided.
    dialect: Optional[str] = None


@dataclass
class Node:
    index: int
    name: str
    type: str
    key: str
    bottoms: List[str]
    tops: List[str]
    loss_weights: List[float]
    propagate_down: List[bool]
    param: "caffe_pb2.LayerParameter"
    where: str = ""
    top_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def _shapes_of(out) -> List[Tuple[int, ...]]:
    """The shapes of a module's output (one tensor, or a tuple/list of them)."""
    return [tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _fake_run(module, bottoms_shapes, dtype=torch.float32):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True):
        return _shapes_of(module(*[torch.empty(s, dtype=dtype) for s in bottoms_shapes]))


def _meta_run(module, bottoms_shapes, dtype=torch.float32):
    # The layer's parameters and buffers swapped for meta tensors of their shapes for the call, and put back
    # after: no data is touched, and unlike FakeTensorMode no torch._dynamo is imported (0.9 s on the first
    # Net() of a process).
    saved = []
    try:
        for m in module.modules():
            for store in (m._parameters, m._buffers):
                for k, t in store.items():
                    if t is not None:
                        saved.append((store, k, t))
                        store[k] = torch.empty_like(t, device="meta")
        out = module(*[torch.empty(s, dtype=dtype, device="meta") for s in bottoms_shapes])
    finally:
        for store, k, t in saved:
            store[k] = t
    return _shapes_of(out)


def infer_top_shapes(module, bottom_shapes, entry=None, n_tops=1):
    """Top shapes of a built layer (its builder has checked the bottoms): bottom 0's for a registry entry
    marked ``reshape_like``, the module's own ``top_shapes`` when it has one, else a run on meta tensors, else
    (a layer that mixes in tensors of its own, or a bad bottom: the error to report) a fake-tensor run."""
    if entry is not None and entry.reshape_like:
        return [tuple(bottom_shapes[0])] * n_tops
    if hasattr(module, "top_shapes"):
        return [tuple(s) for s in module.top_shapes(bottom_shapes)]
    try:
        return _meta_run(module, bottom_shapes)
    except NetspecError:
        raise
    except Exception:
        pass
    try:
        return _fake_run(module, bottom_shapes)
    except NetspecError:
        raise
    except Exception:
        # Some ops have no fake/meta kernel: run once on zeros instead (the shapes are what matters).
        with torch.no_grad():
            dev = next((p.device for p in module.parameters()), torch.device("cpu"))
            return _shapes_of(module(*[torch.zeros(s, device=dev) for s in bottom_shapes]))


class CaffeNet(nn.Module):
    """A prepared (filtered, split-inserted) NetParameter as an ``nn.Module``.

    ``forward(inputs)`` takes a dict of Input-blob tensors and returns a dict with every net output blob
    and, under the key ``"__loss__"``, Caffe's total loss: sum over tops of loss_weight * sum(top).
    """

    def __init__(self, net: "caffe_pb2.NetParameter", phase: int,
                 where: Callable[[int], str] = lambda i: "", input_shapes: Optional[Dict] = None,
                 dialect: Optional[str] = None):
        super().__init__()
        self.name = net.name
        self.dialect = self._dialect(net, dialect)
        self.phase = phase
        self.force_backward = net.force_backward
        self.nodes: List[Node] = []
        self.input_blobs: List[str] = []
        self.blob_shapes: Dict[str, Tuple[int, ...]] = {}
        self.param_owner: Dict[str, Tuple[int, int]] = {}
        used_keys = set()
        shapes: Dict[str, Tuple[int, ...]] = {}
        input_shapes = dict(input_shapes or {})
        self._folds = None  # the inference folding plan (netspec.net.fold), made on first use
        #: Fused BatchNorm -> Scale -> ReLU and Eltwise SUM -> ReLU chains in whole-net runs (netspec.net.fold's
        #: train_plan; same results); the plans, made on first use, by in_place_heads_only.
        self.fuse = True
        self._fusions: Dict[bool, tuple] = {}
        #: the fused BatchNorms' accumulator updates of the pass under way (netspec.net.fold.StatsBatch)
        self._stats_batch = None
        self._step_cache: Dict[int, tuple] = {}  # id(plan) -> (plan, its flat steps, the layer modules then)
        for i, lp in enumerate(net.layer):
            w = where(i)
            entry = LAYERS.get(lp.type, where=f"{w}layer '{lp.name}': ")
            ident = f"{w}layer '{lp.name}' ({lp.type})"
            loss_w, prop = self._check(lp, entry, ident)
            key = self._free_key(lp.name, used_keys)
            bshapes = [shapes[b] for b in lp.bottom]
            module = self._build(lp, entry, bshapes, BuildContext(phase=phase, where=w, dialect=self.dialect), ident)
            self.add_module(key, module)
            lp = self._as_set_up(lp, entry, module)
            node = Node(i, lp.name, lp.type, key, list(lp.bottom), list(lp.top), loss_w, prop, lp, w)
            self._share_params(node, module)
            if not net.force_backward:
                # Caffe computes no diff for a param with lr_mult 0 (param_need_backward) unless forced.
                for spec, prm in zip(lp.param, module.parameters()):
                    if spec.lr_mult == 0:
                        prm.requires_grad_(False)
            if getattr(module, "is_input", False):
                self.input_blobs.extend(lp.top)
            node.top_shapes = self._shape(lp, entry, module, bshapes, input_shapes, ident)
            shapes.update(zip(lp.top, node.top_shapes))
            self.nodes.append(node)
        self.blob_shapes = shapes
        #: Activation checkpointing in the training fast path (see ``_checkpoint_plan``); off by default.
        self.checkpoint = False
        self._ckpt_plans: Dict[Tuple[str, ...], list] = {}
        self._plan()

    # -- the three steps per layer: check the prototxt, build the module, infer the top shapes -------------------
    @staticmethod
    def _check(lp, entry, ident):
        """Arity, loss_weight and propagate_down as Caffe's Net::Init checks them: (loss weights, propagate)."""
        for what, n, arity in (("bottom", len(lp.bottom), entry.bottoms), ("top", len(lp.top), entry.tops)):
            if not accepts(arity, n):
                raise LayerError(f"{ident} takes {describe(arity)} {what}s, got {n}")
        loss_w = list(lp.loss_weight)
        if entry.loss and not loss_w:
            loss_w = [1.0]
        if loss_w and len(loss_w) != len(lp.top):
            raise LayerError(f"{ident}: loss_weight must be unspecified or given once per top blob "
                             f"({len(lp.top)} tops, {len(loss_w)} loss weights)")
        prop = list(lp.propagate_down)
        if prop and len(prop) != len(lp.bottom):
            raise LayerError(f"{ident}: propagate_down must be given once per bottom "
                             f"({len(lp.bottom)} bottoms, {len(prop)} values)")
        return loss_w or [0.0] * len(lp.top), prop or [True] * len(lp.bottom)

    def _free_key(self, name: str, used: set) -> str:
        key, k = module_key(name), 1
        while key in used or hasattr(self, key):
            key = f"{module_key(name)}#{k}"
            k += 1
        used.add(key)
        return key

    @staticmethod
    def _build(lp, entry, bshapes, ctx, ident) -> nn.Module:
        """The registry's builder under the INT_MAX allocation guard, its failures named with the layer."""
        try:
            with _AllocationGuard():
                module = entry.builder(lp, bshapes, ctx)
        except _TooBig as e:
            raise LayerError(f"{ident}: a parameter or buffer of shape {e.shape} has {e.count} elements, more "
                             f"than Caffe's limit of INT_MAX ({INT_MAX}) per blob; check num_output, "
                             "kernel and shape fields") from None
        except NetspecError:
            raise
        except Exception as e:  # a builder's own check: give it the layer's identity
            raise LayerError(f"{ident}: cannot build with bottom shapes {bshapes}: {e}") from e
        n_blobs = len(list(module.parameters()))
        if len(lp.param) > n_blobs:  # Net::Init: CHECK_LE(param_size, num_param_blobs)
            raise LayerError(f"{ident}: Too many params specified for layer: {len(lp.param)} param {{ }} "
                             f"blocks, but the layer has {n_blobs} parameter blob{'s' * (n_blobs != 1)}")
        return module

    @staticmethod
    def _shape(lp, entry, module, bshapes, input_shapes, ident) -> List[Tuple[int, ...]]:
        """The top shapes (an Input layer's own, or given ``input_shapes``; else ``infer_top_shapes``), checked
        against Caffe's blob limits."""
        if getattr(module, "is_input", False):
            tshapes = [tuple(input_shapes.get(t, s)) for t, s in zip(lp.top, module.top_shapes([]))]
        else:
            try:
                tshapes = infer_top_shapes(module, bshapes, entry, len(lp.top))
            except NetspecError:
                raise
            except Exception as e:
                raise LayerError(f"{ident}: cannot run on bottom shapes "
                                 f"{', '.join(f'{b} {tuple(s)}' for b, s in zip(lp.bottom, bshapes))}: {e}") from e
        for t, sh in zip(lp.top, tshapes):
            if any(d < 0 for d in sh):
                raise LayerError(f"{ident}: top '{t}' would have negative dimensions {tuple(sh)}")
            if math.prod(sh) > INT_MAX:
                raise LayerError(f"{ident}: top '{t}' of shape {tuple(sh)} has {math.prod(sh)} elements, more "
                                 "than Caffe's limit of INT_MAX (2147483647) per blob; check the dims")
        if len(tshapes) != len(lp.top):
            raise LayerError(f"{ident}: produced {len(tshapes)} tops, the prototxt names {len(lp.top)}")
        return tshapes

    @staticmethod
    def _dialect(net, chosen: Optional[str]) -> Optional[str]:
        """The fork dialect to build with: ``chosen``, else the process-wide one (the tools' --dialect), else
        the one the net's own layers and fields show (logged, with how to choose another)."""
        from ..passes import dialects
        from . import runtime
        if chosen is not None:
            return dialects.check_dialect(chosen)
        if runtime.dialect() is not None:
            return runtime.dialect()
        found = dialects.detect(net)
        if found is None:
            return None
        name, reason = found
        if name != "bvlc":
            log.info("Net '%s' reads as a %s net (%s); pass dialect= (tools: --dialect) to choose another",
                     net.name, name, reason)
        return name

    @staticmethod
    def _as_set_up(lp, entry, module):
        """The LayerParameter as Caffe's layer setup leaves it (what Net::ToProto writes): a LossLayer's
        implicit loss_weight 1, and lr_mult 0 specs for blobs that are statistics, not learned (BatchNorm)."""
        blobs = list(module.parameters())
        fixed = blobs and not lp.param and all(not p.requires_grad for p in blobs)
        # A module may name blobs its fork never trains (PSPNet's frozen BN: fixed_blobs): lr_mult and
        # decay_mult 0 whatever the prototxt says, as the fork's LayerSetUp forces them.
        forced = [i for i in getattr(module, "fixed_blobs", ()) if i < len(blobs)
                  and (i >= len(lp.param) or lp.param[i].lr_mult != 0 or lp.param[i].decay_mult != 0)]
        if not (entry.loss and not lp.loss_weight) and not fixed and not forced:
            return lp
        out = type(lp)()
        out.CopyFrom(lp)
        if entry.loss and not lp.loss_weight:
            out.loss_weight.append(1.0)
        if fixed:
            for _ in blobs:
                out.param.add().lr_mult = 0.0
        for i in forced:
            while len(out.param) <= i:
                out.param.add()
            out.param[i].lr_mult = out.param[i].decay_mult = 0.0
        return out

    # -- parameter sharing by ParamSpec.name (Caffe's AppendParam) ---------------------------------------
    def _share_params(self, node: Node, module: nn.Module):
        named = list(module.named_parameters())
        for j, spec in enumerate(node.param.param):
            if j >= len(named) or not spec.name:
                continue
            if spec.name not in self.param_owner:
                self.param_owner[spec.name] = (node.index, j)
                continue
            oi, oj = self.param_owner[spec.name]
            owner = list(self.get_module(oi).parameters())[oj]
            attr, mine = named[j]
            strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
            if (strict and owner.shape != mine.shape) or owner.numel() != mine.numel():
                raise LayerError(
                    f"{node.where}layer '{node.name}' ({node.type}): cannot share param '{spec.name}' of "
                    f"shape {tuple(mine.shape)} with the owner's shape {tuple(owner.shape)}")
            parent = module
            *path, leaf = attr.split(".")
            for p in path:
                parent = getattr(parent, p)
            if owner.shape != mine.shape:
                raise LayerError(f"{node.where}layer '{node.name}': PERMISSIVE sharing of differently shaped "
                                 "blobs is not supported")
            setattr(parent, leaf, owner)

    def get_module(self, index: int) -> nn.Module:
        return getattr(self, self.nodes[index].key)

    def layer_blobs(self, index: int) -> List[torch.Tensor]:
        """The Caffe param blobs of layer ``index``, in Caffe's order."""
        return list(self.get_module(index).parameters())

    def learnable_params(self) -> List["LearnableParam"]:
        """Caffe's learnable_params_ (shared blobs once), in net order."""
        seen = set()
        out = []
        for node in self.nodes:
            for j, p in enumerate(self.layer_blobs(node.index)):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                spec = node.param.param[j] if j < len(node.param.param) else _blank_param_spec(node.param)
                out.append(LearnableParam(p, spec.lr_mult, spec.decay_mult, node.name, j))
        return out

    # -- execution plan -----------------------------------------------------------------------------------
    def _plan(self):
        available = {}  # an insertion-ordered set: linear in the number of layers (a list was quadratic)
        for node in self.nodes:
            for b in node.bottoms:
                available.pop(b, None)
            for t in node.tops:
                available.setdefault(t, None)
        # Caffe keeps net outputs in a std::set: sorted by name.
        self.output_blobs = sorted(available)
        last_read = {}
        for node in self.nodes:
            for b in node.bottoms:
                last_read[b] = node.index
        outputs = set(self.output_blobs)
        self._free_after = [[] for _ in self.nodes]
        for b, i in last_read.items():
            if b not in outputs and b not in self.nodes[i].tops:
                self._free_after[i].append(b)

    def run(self, feed: Dict[str, torch.Tensor], *, keep: bool = False, start: int = 0,
            end: Optional[int] = None, env: Optional[Dict[str, torch.Tensor]] = None,
            on_top: Optional[Callable] = None, before: Optional[Callable] = None,
            after: Optional[Callable] = None, retain=(), fold: bool = False):
        """Run layers ``start..end`` (inclusive). Returns (env, loss).

        ``feed`` gives the Input blobs. ``keep`` keeps every blob (pycaffe); otherwise blobs are freed after
        their last reader, except those named in ``retain``. ``on_top(node, j, tensor)`` sees every top as
        produced (first versions included; a fused Eltwise -> ReLU's top twice, with the same ``node``: the sum
        before its relu_, then the result; a fused chain's other inner in-place versions are never produced).
        ``fold`` (gradient-free whole-net runs only): Convolution -> BatchNorm -> Scale chains run as one
        convolution (netspec.net.fold). Otherwise whole-net runs without ``before``/``after`` run BatchNorm ->
        Scale -> ReLU and Eltwise SUM -> ReLU chains fused while ``self.fuse`` (netspec.net.fold.train_plan).
        """
        env = {} if env is None else env
        end = len(self.nodes) - 1 if end is None else end
        whole = start == 0 and end == len(self.nodes) - 1 and on_top is None and before is None and after is None
        if self.checkpoint and torch.is_grad_enabled() and not keep and whole:
            return self._run_checkpointed(feed, env, retain)
        if fold and whole and not keep and not torch.is_grad_enabled():
            return self._run_nodes(self._steps(*self._fold_plan()), feed, env, keep, retain=retain)
        if self.fuse and start == 0 and end == len(self.nodes) - 1 and before is None and after is None:
            # (pycaffe's forward passes on_top and keeps every blob: only chains that keep first versions)
            steps = self._steps(*self._train_plan(keep or on_top is not None))
            stats = self._stats_batch
            stats.clear()  # (what a pass that raised left)
            if keep or on_top is not None or retain:
                out = self._run_nodes(steps, feed, env, keep, on_top, retain=retain)
            else:
                out = self._run_steps(steps, feed, env)
            stats.flush()
            return out
        return self._run_nodes(self._steps()[start:end + 1], feed, env, keep, on_top, before, after, retain)

    _NO_PLAN = ({}, frozenset())

    def _steps(self, heads=None, absorbed=None):
        """A plan (``heads``: fused modules by first layer, ``absorbed``: layers they cover; none: every layer as
        built) as flat steps ``(node, module or None when absorbed, blobs to free)``: no per-layer lookups while
        it runs."""
        if heads is None:
            heads, absorbed = self._NO_PLAN
        cache = self._step_cache.get(id(heads))  # (each entry holds its plan, so no other plan can take its id)
        if (cache is not None and len(cache[2]) == len(self._modules)
                and all(a is b for a, b in zip(cache[2], self._modules.values()))):  # no layer module replaced
            return cache[1]
        steps = [(node, None if node.index in absorbed else heads.get(node.index) or getattr(self, node.key),
                  tuple(self._free_after[node.index])) for node in self.nodes]
        self._step_cache[id(heads)] = (heads, steps, list(self._modules.values()))
        return steps

    def _run_steps(self, steps, feed, env):
        """``_run_nodes`` for the solver pass (blobs freed after their last reader, nothing observed)."""
        loss = None
        for node, module, free in steps:
            if module is not None:
                outs = self._outputs(node, module, feed, env)
                for t, v in zip(node.tops, outs):
                    env[t] = v
                for w, v in zip(node.loss_weights, outs):
                    if w:
                        loss = self._add_loss(loss, v, w)
            for b in free:
                env.pop(b, None)
        return env, loss

    def _outputs(self, node: Node, module, feed, env) -> tuple:
        """A layer's tops: an Input's from ``feed``, else the module run on the bottoms in ``env`` (detached
        where propagate_down is false); errors name the layer, and the shapes where the module failed."""
        if getattr(type(module), "is_input", False):  # (a class attribute: no nn.Module __getattr__ miss)
            outs = []
            for t in node.tops:
                if t not in feed:
                    raise NetspecError(f"Input blob '{t}' (layer '{node.name}') was not given a value")
                outs.append(feed[t])
            return outs
        try:
            xs = [env[b] if pd else env[b].detach() for b, pd in zip(node.bottoms, node.propagate_down)]
        except KeyError as e:
            raise NetspecError(f"layer '{node.name}' reads blob {e} which has not been computed "
                               "(forward from an earlier start layer)") from None
        try:
            out = module(*xs)
        except NetspecError as e:
            if node.name in str(e):
                raise
            raise type(e)(f"{self._ident(node)}: {e}") from e
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise self._runtime_error(node, xs, e) from e
        return out if isinstance(out, (tuple, list)) else (out,)

    @staticmethod
    def _add_loss(loss, top, weight):
        term = top.sum() * weight if weight != 1 else top.sum()
        return term if loss is None else loss + term

    def _train_plan(self, in_place_heads_only: bool):
        key = bool(in_place_heads_only)
        if key not in self._fusions:
            from .fold import StatsBatch, train_plan
            if self._stats_batch is None:
                self._stats_batch = StatsBatch()
            self._fusions[key] = train_plan(self, in_place_heads_only, self._stats_batch)
        return self._fusions[key]

    def _fold_plan(self):
        if self._folds is None:
            from .fold import plan
            self._folds = plan(self)
        return self._folds

    def _run_nodes(self, steps, feed, env, keep=False, on_top=None, before=None, after=None, retain=()):
        """Run ``steps`` (``_steps``), observed (``on_top``, ``before``, ``after``), keeping every blob (``keep``)
        or freeing each after its last reader but those in ``retain``."""
        loss = None
        for node, module, free in steps:
            if module is None:  # absorbed into an earlier layer's fused module: only its blob bookkeeping remains
                if not keep:
                    for b in free:
                        if b not in retain:
                            env.pop(b, None)
                continue
            if before is not None:
                before(node.index)
            # a fused chain that changes its one top in place shows on_top that top's first version from
            # inside (the same tensor object it then returns, changed), instead of on_top seeing the result
            # (set past nn.Module.__setattr__, a plain attribute)
            shown = on_top is not None and getattr(type(module), "shows_first", False)
            if shown:
                object.__setattr__(module, "on_first", functools.partial(on_top, node, 0))
            try:
                outs = self._outputs(node, module, feed, env)
            finally:
                if shown:
                    object.__setattr__(module, "on_first", None)
            for j, (t, v) in enumerate(zip(node.tops, outs)):
                env[t] = v
                w = node.loss_weights[j]
                if w:
                    loss = self._add_loss(loss, v, w)
                if on_top is not None:  # (a shown chain: its result, after the first version it showed)
                    on_top(node, j, v)
            if not keep:
                for b in free:
                    if b not in retain:
                        env.pop(b, None)
            if after is not None:
                after(node.index)
        return env, loss

    @staticmethod
    def _ident(node: Node) -> str:
        return f"{node.where}layer '{node.name}' ({node.type})"

    def _runtime_error(self, node: Node, xs, e: Exception) -> LayerError:
        """A failure inside a layer's forward, with the layer, its bottoms' shapes and the shapes it was built
        for (a blob reshaped since, a bad index value...)."""
        got = ", ".join(f"'{b}' {tuple(x.shape)}" for b, x in zip(node.bottoms, xs))
        built = {b: self.blob_shapes.get(b) for b in node.bottoms}
        changed = [f"'{b}' was {tuple(built[b])}" for b, x in zip(node.bottoms, xs)
                   if built[b] is not None and tuple(built[b]) != tuple(x.shape)]
        hint = f" (built for {', '.join(changed)}: reshape the net's inputs consistently)" if changed else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return LayerError(f"{self._ident(node)} failed on bottoms {got}{hint}: {type(e).__name__}: {first}")

    # -- activation checkpointing ---------------------------------------------------------------------------
    def _checkpointable(self, node: Node) -> bool:
        """A pure layer (registry) that feeds no loss and updates no state in this forward (a module says so
        with ``updates_state``: BatchNorm with batch statistics updates its moving averages, which a recompute
        would do twice), or one whose update a recompute can skip (``hold_state``, see ``_recompute_holding``)."""
        if not LAYERS.get(node.type).pure or any(node.loss_weights):
            return False
        module = self.get_module(node.index)
        return not getattr(module, "updates_state", False) or hasattr(module, "hold_state")

    def _recompute_holding(self, nodes):
        """checkpoint's context_fn: the first forward runs as usual; the recompute sets ``hold_state`` on the
        segment's stateful modules (BatchNorm's batch statistics: the output is the same, the accumulators are
        updated once)."""
        held = [m for m in (self.get_module(n.index) for n in nodes) if getattr(m, "updates_state", False)]
        if not held:
            return None

        @contextlib.contextmanager
        def holding():
            for m in held:
                m.hold_state = True
            try:
                yield
            finally:
                for m in held:
                    m.hold_state = False
        return lambda: (contextlib.nullcontext(), holding())

    def _checkpoint_plan(self, retain) -> list:
        """Items ``(node, None, None)`` run as usual, or ``(nodes, inputs, outputs)``: a segment whose inner
        blobs are not kept for backward but recomputed. Each maximal run of checkpointable layers is cut into
        about sqrt(len) segments of equal layer count (Chen et al.'s sqrt(n) memory schedule)."""
        key = tuple(sorted(retain))
        if key in self._ckpt_plans:
            return self._ckpt_plans[key]
        last_read: Dict[str, int] = {}
        for node in self.nodes:
            for b in node.bottoms:
                last_read[b] = node.index
        keep_names = set(self.output_blobs) | set(retain)
        runs, current = [], []
        for node in self.nodes:
            if self._checkpointable(node):
                current.append(node)
                continue
            if current:
                runs.append(current)
                current = []
            runs.append(node)
        if current:
            runs.append(current)
        plan = []
        for item in runs:
            if isinstance(item, Node):
                plan.append((item, None, None))
                continue
            size = max(2, round(math.sqrt(len(item))))
            for k in range(0, len(item), size):
                seg = item[k:k + size]
                if len(seg) == 1:
                    plan.append((seg[0], None, None))
                    continue
                produced, inputs = set(), []
                for node in seg:
                    for b in node.bottoms:
                        if b not in produced and b not in inputs:
                            inputs.append(b)
                    produced.update(node.tops)
                end = seg[-1].index
                outputs = [t for t in dict.fromkeys(t for n in seg for t in n.tops)
                           if last_read.get(t, -1) > end or t in keep_names]
                plan.append((seg, inputs, outputs))
        self._ckpt_plans[key] = plan
        return plan

    def _run_segment(self, nodes, inputs, outputs, *xs):
        env = dict(zip(inputs, xs))
        wanted = set(outputs)
        for node in nodes:
            module = getattr(self, node.key)
            args = [env[b] if pd else env[b].detach() for b, pd in zip(node.bottoms, node.propagate_down)]
            out = module(*args)
            for t, v in zip(node.tops, out if isinstance(out, (tuple, list)) else (out,)):
                env[t] = v
            for b in self._free_after[node.index]:
                if b not in wanted:
                    env.pop(b, None)
        return tuple(env[o] for o in outputs)

    def _run_checkpointed(self, feed, env, retain):
        from torch.utils.checkpoint import checkpoint
        loss = None
        steps = self._steps()
        for item, inputs, outputs in self._checkpoint_plan(retain):
            if inputs is None:
                env, term = self._run_nodes([steps[item.index]], feed, env, retain=retain)
                if term is not None:
                    loss = term if loss is None else loss + term
                continue
            ctx = self._recompute_holding(item)
            outs = checkpoint(self._run_segment, item, inputs, outputs, *[env[b] for b in inputs],
                              use_reentrant=False, preserve_rng_state=True,
                              **({"context_fn": ctx} if ctx is not None else {}))
            env.update(zip(outputs, outs))
            for node in item:
                for b in self._free_after[node.index]:
                    if b not in retain and b not in outputs:
                        env.pop(b, None)
        return env, loss

    def forward(self, inputs: Optional[Dict[str, torch.Tensor]] = None, **kw):
        feed = dict(inputs or {}, **kw)
        env, loss = self.run(feed)
        out = {b: env[b] for b in self.output_blobs if b in env}
        if loss is not None:
            out["__loss__"] = loss
        return out

    def describe_shapes(self) -> str:
        """Caffe's setup log: per layer, bottoms, tops and top shapes with counts."""
        lines = []
        mem = 0
        for node in self.nodes:
            lines.append(f"Creating Layer {node.name}")
            for b in node.bottoms:
                lines.append(f"{node.name} <- {b}")
            for t in node.tops:
                lines.append(f"{node.name} -> {t}" + (" (in-place)" if t in node.bottoms else ""))
            lines.append(f"Setting up {node.name}")
            for t, s in zip(node.tops, node.top_shapes):
                n = math.prod(s)
                lines.append(f"Top shape: {' '.join(map(str, s))} ({n})" if s else f"Top shape: ({n})")
                mem += n
            lines.append(f"Memory required for data: {mem * 4}")
        return "\n".join(lines)
