"""Export a Caffe deploy net (prototxt + caffemodel) to ONNX, TorchScript or a ``torch.export`` program.

:func:`export` builds ``Net(prototxt, weights, TEST)``, wraps its ``CaffeNet`` in :class:`DeployModule` (inputs:
the Input blobs as positional tensors, named as in the prototxt; outputs: the net outputs in Caffe's sorted
order, as a tuple) and

* runs ``torch.export.export`` on it, with the batch (where the net allows) and, with ``dynamic_hw``, H and W
  of every 4-D input dynamic;
* writes ONNX with ``torch.onnx.export`` (the ``torch.export``-based exporter, which needs ``onnx`` and
  ``onnxscript``; for an opset below 18, which that exporter cannot write, torch's TorchScript-based
  exporter) and, with ``check``, runs it in ``onnxruntime`` on the same random input as netspec (and on a
  second batch and H x W when those are dynamic), printing max|ort - netspec| / max|netspec| per output;
* optionally writes TorchScript (``torch.jit.trace``) and the ``torch.export`` program
  (``torch.export.save``), checked the same way.

Layers whose netspec forward decides things in Python from the input size are replaced in the exported graph
by shape-generic equivalents that give the same values (Pooling: torch's pooling with ``ceil_mode``, which is
Caffe's output size rule whenever pad > 0 or stride <= kernel; global pooling: a reduction; Crop: a slice
whose length is read from the reference blob); Eltwise, BNLL and MVN run their forward without the custom
autograd Functions netspec uses for Caffe's gradients (TorchScript cannot save those). Layers that cannot be
exported get an :class:`ExportError` naming the layer, its type and why (and the ONNX opset they need when
``opset`` is too low); a failure inside torch's exporter is traced back to the first layer that fails alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import NetspecError
from ..net.caffe_net import CaffeNet
from ..registry import LAYERS

__all__ = ["ExportError", "ExportReport", "DeployModule", "check_exportable", "export", "relative_error",
           "DEFAULT_OPSET"]

log = logging.getLogger("netspec")

#: Opset written when none is asked for (the torch.export-based exporter's own default).
DEFAULT_OPSET = 18

class ExportError(NetspecError, ValueError):
    """A net (or one of its layers) that cannot be exported as asked."""


# ---------------------------------------------------------------------------
# the exported module
# ---------------------------------------------------------------------------


class DeployModule(nn.Module):
    """A CaffeNet as ``forward(*input_blobs) -> tuple(output blobs)`` for export (parameters shared)."""

    def __init__(self, net: CaffeNet, replacements: Optional[Dict[str, nn.Module]] = None):
        super().__init__()
        self.net = net
        self.swapped = nn.ModuleDict(replacements or {})
        self.input_names = list(net.input_blobs)
        self.output_names = list(net.output_blobs)
        #: Graph output names: a blob that is both an input and an output (an in-place layer on an Input
        #: blob) gets "_out" appended, since ONNX names every value once.
        self.graph_output_names = [o + "_out" if o in self.input_names else o for o in self.output_names]

    def forward(self, *xs):
        env = dict(zip(self.input_names, xs))
        for node in self.net.nodes:
            module = self.swapped[node.key] if node.key in self.swapped else getattr(self.net, node.key)
            if getattr(module, "is_input", False):
                continue
            out = module(*[env[b] for b in node.bottoms])
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for t, v in zip(node.tops, outs):
                env[t] = v
        return tuple(env[o] for o in self.output_names)


def check_exportable(net: CaffeNet, *, opset: Optional[int] = None, dynamic_hw: bool = False
                     ) -> Tuple[Dict[str, nn.Module], List[str]]:
    """Raise ExportError for a layer that cannot be exported; return (replacement modules by key, notes)."""
    problems, notes = [], []
    replacements: Dict[str, nn.Module] = {}
    for node in net.nodes:
        ident = f"{node.where}layer '{node.name}' ({node.type})"
        module = net.get_module(node.index)
        entry = LAYERS.get(node.type)
        how = entry.export
        if how.refuse:
            problems.append(f"{ident} {how.refuse}")
            continue
        if entry.loss:
            problems.append(f"{ident} is a loss layer: export a deploy prototxt (no loss, label or "
                            "accuracy layers)")
            continue
        need = how.min_opset(module) if callable(how.min_opset) else how.min_opset
        if opset is not None and opset < need:
            problems.append(f"{ident} needs ONNX opset >= {need} ({how.needs}); --opset {opset} is too low")
            continue
        try:
            rep = how.deploy(module, dynamic_hw) if how.deploy else None
        except ValueError as e:
            problems.append(f"{ident} {e}")
            continue
        if getattr(module, "updates_state", False):  # BatchNorm with batch statistics, the forks' BN learning
            problems.append(f"{ident} updates its statistics in forward (batch statistics): build the deploy net "
                            "with stored ones (BatchNorm: use_global_stats: true; BN: frozen: true or bn_mode: "
                            "INFERENCE)")
            continue
        if isinstance(rep, nn.Module):
            replacements[node.key] = rep
        elif rep and dynamic_hw:
            problems.append(f"{ident} cannot be exported with a dynamic H x W: {rep}; export at a fixed "
                            "input size (no --dynamic-hw)")
        elif rep:
            notes.append(f"{ident}: {rep}; the graph is valid for the example input size only")
    if problems:
        raise ExportError("cannot export this net:\n  " + "\n  ".join(problems))
    return replacements, notes


# ---------------------------------------------------------------------------
# comparing
# ---------------------------------------------------------------------------


def relative_error(got, want) -> float:
    """max|got - want| / max|want| (absolute error when want is all zeros); inf for a shape mismatch or a
    NaN / infinity in one but not the other."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    # NaN where both are NaN and equal infinities agree (e.g. Log of a negative input); elsewhere they count.
    same = (np.isnan(got) & np.isnan(want)) | (np.isinf(want) & (got == want))
    if (~np.isfinite(got) & ~same).any() or (~np.isfinite(want) & ~same).any():
        return math.inf
    got, want = got[~same], want[~same]
    if not want.size:
        return 0.0
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    return float(err / scale) if scale > 0 else float(err)


@dataclasses.dataclass
class ExportReport:
    onnx: Optional[str] = None
    torchscript: Optional[str] = None
    exported_program: Optional[str] = None
    opset: Optional[int] = None
    input_shapes: Dict[str, Tuple[int, ...]] = dataclasses.field(default_factory=dict)
    dynamic: Dict[str, List[int]] = dataclasses.field(default_factory=dict)   # input -> dynamic axes
    checks: List[Tuple[str, str, str, float]] = dataclasses.field(default_factory=list)  # (what, shape, output, err)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max((c[3] for c in self.checks), default=0.0)


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def _example_inputs(net: CaffeNet, input_shapes, generator) -> Dict[str, torch.Tensor]:
    shapes = {}
    for name in net.input_blobs:
        shape = tuple((input_shapes or {}).get(name, net.blob_shapes.get(name, ())))
        if not shape:
            raise ExportError(f"Input blob '{name}' has no shape in the prototxt: give one "
                              f"(--input-shape {name}=1,3,224,224)")
        shapes[name] = shape
    return {n: torch.randn(s, generator=generator) for n, s in shapes.items()}


def _second_shape(shape: Tuple[int, ...], dynamic: Sequence[int]) -> Tuple[int, ...]:
    """The shape for the second check: batch + 1 and a larger H x W of another parity, on the axes that
    are dynamic."""
    out = list(shape)
    if 0 in dynamic and out:
        out[0] += 1
    if len(shape) == 4 and 2 in dynamic and 3 in dynamic:
        out[2] += out[2] // 4 + 3
        out[3] += out[3] // 3 + 2
    return tuple(out)


def _quiet():
    """Silence the exporter's progress lines and symbolic-shape chatter; errors still propagate."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export", "torch.onnx",
                 "torch._export"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    return stack


def _torch_export(module: DeployModule, args, dynamic_axes: Dict[str, List[int]]):
    dims = tuple({a: torch.export.Dim.AUTO for a in dynamic_axes.get(n, [])} or None
                 for n in module.input_names)
    errors = []
    for strict in (False, True):
        try:
            with _quiet():
                return torch.export.export(module, args, dynamic_shapes=(dims,), strict=strict)
        except Exception as e:  # noqa: BLE001 - try the other tracer, then localise
            errors.append(e)
    raise errors[-1]


def _dynamic_axes_of(ep, module: DeployModule) -> Dict[str, List[int]]:
    """Axes of each input that stayed symbolic in the exported program."""
    out = {}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    by_name = {n.name: n for n in placeholders}
    for name, ph in zip(module.input_names, user_inputs):
        val = by_name[ph].meta.get("val")
        if val is None:
            continue
        out[name] = [i for i, d in enumerate(val.shape) if not _static(d)]
    return out


def _static(d) -> bool:
    """True for a plain int and for a SymInt torch.export pinned to a constant."""
    if isinstance(d, int):
        return True
    node = getattr(d, "node", None)
    return node is not None and node.maybe_as_int() is not None


def _localise(module: DeployModule, inputs: Dict[str, torch.Tensor], exc: Exception) -> ExportError:
    """Find the first layer that torch.export cannot trace on its own; an ExportError naming it."""
    env = dict(inputs)
    net = module.net
    with torch.no_grad():
        for node in net.nodes:
            layer = module.swapped[node.key] if node.key in module.swapped else getattr(net, node.key)
            if getattr(layer, "is_input", False):
                continue
            xs = tuple(env[b] for b in node.bottoms)
            try:
                with _quiet():
                    torch.export.export(_Call(layer), xs, strict=False)
            except Exception as e:  # noqa: BLE001
                text = str(e).strip().splitlines()
                return ExportError(f"{node.where}layer '{node.name}' ({node.type}) cannot be exported: "
                                   f"{text[0] if text else type(e).__name__}")
            out = layer(*xs)
            for t, v in zip(node.tops, out if isinstance(out, (tuple, list)) else (out,)):
                env[t] = v
    first = str(exc).strip().splitlines()
    return ExportError(f"torch.export failed: {first[0] if first else type(exc).__name__}")


class _Call(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, *xs):
        return self.layer(*xs)


def _netspec_outputs(net: CaffeNet, inputs: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.forward(inputs)
    return {k: v.float().numpy() for k, v in out.items() if k != "__loss__"}


def export(model, *, weights: Optional[str] = None, onnx_path: Optional[str] = None,
           torchscript: Optional[str] = None, exported_program: Optional[str] = None,
           dynamic_hw: bool = False, opset: Optional[int] = None, check: bool = True, tol: float = 1e-5,
           input_shapes: Optional[Dict[str, Sequence[int]]] = None, seed: int = 0,
           echo: Callable[[str], None] = lambda s: None) -> ExportReport:
    """Export ``model`` (a prototxt path, NetParameter, ``Net`` or ``CaffeNet``; ``weights``: a caffemodel
    for a prototxt) to ONNX (``onnx_path``), TorchScript (``torchscript``) and/or a torch.export program
    (``exported_program``, ``.pt2``). ``check`` compares each against netspec on random inputs (and, when
    dynamic, on a second input size): an error above ``tol`` raises ExportError. ``echo`` receives progress
    and the error lines. Returns an :class:`ExportReport`."""
    net = _deploy_net(model, weights, echo)
    module, report = _prepare(net, onnx_path, opset, dynamic_hw, echo)
    gen = torch.Generator().manual_seed(seed)
    inputs = _example_inputs(net, input_shapes, gen)
    report.input_shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    args = tuple(inputs[n] for n in module.input_names)
    want_dynamic = {n: ([0, 2, 3] if dynamic_hw and t.dim() == 4 else [0]) if t.dim() >= 2 else []
                    for n, t in inputs.items()}
    if dynamic_hw:
        _require_other_hw(net, inputs, gen)
    ep = _trace(module, args, inputs, want_dynamic)
    _record_dynamic(ep, module, inputs, dynamic_hw, report, echo)
    checker = _Checker(net, module, inputs, gen, check, tol, report, echo)
    checker = checker if check else None
    if onnx_path:
        _save_onnx(ep, module, args, onnx_path, opset, report, echo, checker)
    if exported_program:
        _save_program(ep, module, exported_program, report, echo, checker)
    if torchscript:
        _save_torchscript(module, args, torchscript, report, echo, checker)
    return report


def _deploy_net(model, weights: Optional[str], echo) -> CaffeNet:
    """The CaffeNet to export, on the CPU in eval mode (built with ``weights`` from a prototxt or NetParameter)."""
    from ..net.pycaffe import Net, TEST
    if isinstance(model, CaffeNet):
        net = model
    elif isinstance(model, Net):
        net = model.module
    else:
        net = Net(model, TEST, weights=weights, device=torch.device("cpu")).module
        if not weights:
            echo("note: no weights given: exporting the fillers' initial values")
    return net.to("cpu").eval()


def _prepare(net: CaffeNet, onnx_path, opset, dynamic_hw: bool, echo) -> Tuple[DeployModule, ExportReport]:
    """Check every layer (the opset only matters for ONNX) and wrap the net with its replacements."""
    opset_for_check = opset if onnx_path else None
    replacements, notes = check_exportable(net, opset=opset_for_check, dynamic_hw=dynamic_hw)
    report = ExportReport(opset=(opset or DEFAULT_OPSET) if onnx_path else None, notes=notes)
    for n in notes:
        echo(f"note: {n}")
    if not net.output_blobs:
        raise ExportError("the net has no output blob")
    return DeployModule(net, replacements).eval(), report


def _require_other_hw(net: CaffeNet, inputs: Dict[str, torch.Tensor], gen) -> None:
    """For ``dynamic_hw``: the net must run at another H x W. A net that cannot (InnerProduct, Reshape with
    fixed dims) is not dynamic even when torch.export keeps symbols with a constraint such as H*W == 16."""
    other = {n: torch.randn(_second_shape(tuple(t.shape), [2, 3]), generator=gen) for n, t in inputs.items()}
    try:
        _netspec_outputs(net, other)
    except Exception as e:  # noqa: BLE001
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in other.items())
        raise ExportError(f"the net only runs at the example H x W "
                          f"({', '.join(str(tuple(t.shape[2:])) for t in inputs.values())}): at {shapes} "
                          f"{_first_line(e)}; export without --dynamic-hw") from None


def _trace(module: DeployModule, args, inputs: Dict[str, torch.Tensor], want_dynamic: Dict[str, List[int]]):
    """The torch.export program of ``module``; a failure becomes an ExportError naming the first layer that
    cannot be exported alone."""
    # torch.export specialises size-1 dims: trace a batch of 2 so the batch stays dynamic where it can.
    wide = tuple(a.repeat(2, *([1] * (a.dim() - 1))) if a.dim() and a.shape[0] == 1 else a for a in args)
    with torch.no_grad():
        try:
            return _torch_export(module, wide, want_dynamic)
        except Exception:  # noqa: BLE001 - e.g. a Reshape that fixes the batch: trace as given
            try:
                return _torch_export(module, args, want_dynamic)
            except Exception as e:  # noqa: BLE001
                raise _localise(module, inputs, e) from e


def _record_dynamic(ep, module: DeployModule, inputs: Dict[str, torch.Tensor], dynamic_hw: bool,
                    report: ExportReport, echo) -> None:
    """The axes that stayed dynamic, the renamed graph outputs; with ``dynamic_hw``, refuse a fixed H x W."""
    report.dynamic = _dynamic_axes_of(ep, module)
    for o, g in zip(module.output_names, module.graph_output_names):
        if o != g:
            report.notes.append(f"output blob '{o}' is also an input (in-place on an Input blob): the "
                                f"graph output is named '{g}'")
            echo(f"note: {report.notes[-1]}")
    if dynamic_hw:
        fixed = [n for n, t in inputs.items() if t.dim() == 4 and not {2, 3} <= set(report.dynamic.get(n, []))]
        if fixed:
            raise ExportError(f"input(s) {', '.join(fixed)}: the net only runs at the example H x W "
                              f"{', '.join(str(tuple(inputs[n].shape[2:])) for n in fixed)} (a layer such as "
                              "InnerProduct or Reshape fixes the spatial size); export without --dynamic-hw")


class _Checker:
    """Compares an exported artefact with netspec on the example input and, with ``check`` and a dynamic
    axis, on a second input size; ``checker(what, run)`` records each output's error and raises above ``tol``."""

    def __init__(self, net: CaffeNet, module: DeployModule, inputs: Dict[str, torch.Tensor], gen, check: bool,
                 tol: float, report: ExportReport, echo):
        second = None
        if check:
            second = {n: torch.randn(_second_shape(tuple(t.shape), report.dynamic.get(n, [])), generator=gen)
                      for n, t in inputs.items()}
            if all(second[n].shape == inputs[n].shape for n in inputs):
                second = None
        self.cases = [inputs] + ([second] if second is not None else [])
        self.expected = [_netspec_outputs(net, c) for c in self.cases]
        self.module, self.tol, self.report, self.echo = module, tol, report, echo

    def __call__(self, what: str, run) -> None:
        tol = self.tol
        for case, want in zip(self.cases, self.expected):
            got = run(case)
            shape = " ".join("x".join(map(str, case[n].shape)) for n in self.module.input_names)
            for name, g in zip(self.module.output_names, got):
                err = relative_error(g, want[name])
                self.report.checks.append((what, shape, name, err))
                self.echo(f"{what}: input {shape}: output '{name}' {tuple(np.shape(g))}: relative error "
                          f"{err:.3g} (tolerance {tol:g})")
                if not err <= tol:
                    raise ExportError(f"{what} differs from netspec on input {shape}: output '{name}' "
                                      f"relative error {err:.3g} > {tol:g}")


def _save_onnx(ep, module: DeployModule, args, path: str, opset: Optional[int], report: ExportReport, echo,
               checker: Optional[_Checker]) -> None:
    before = len(report.notes)
    _write_onnx(ep, module, args, path, opset, report)
    for n in report.notes[before:]:
        echo(f"note: {n}")
    echo(f"wrote {path} (opset {report.opset}; dynamic axes "
         f"{ {k: v for k, v in report.dynamic.items()} })")
    if checker is not None:
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        checker("onnxruntime", lambda c: sess.run(None, {k: c[n].numpy() for k, n in
                                                         zip(names, module.input_names)}))


def _save_program(ep, module: DeployModule, path: str, report: ExportReport, echo,
                  checker: Optional[_Checker]) -> None:
    torch.export.save(ep, path)
    report.exported_program = path
    echo(f"wrote {path} (torch.export program)")
    if checker is not None:
        loaded = torch.export.load(path).module()
        checker("torch.export", lambda c: _run_torch(loaded, c, module.input_names))


def _save_torchscript(module: DeployModule, args, path: str, report: ExportReport, echo,
                      checker: Optional[_Checker]) -> None:
    with torch.no_grad(), _quiet():
        try:
            traced = torch.jit.trace(module, args, check_trace=False)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"torch.jit.trace failed: {str(e).splitlines()[0] if str(e) else e}") from e
    traced.save(path)
    report.torchscript = path
    echo(f"wrote {path} (TorchScript, traced)")
    if checker is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
            loaded_ts = torch.jit.load(path)
        checker("torchscript", lambda c: _run_torch(loaded_ts, c, module.input_names))


def _run_torch(fn, case, names):
    with torch.no_grad():
        out = fn(*[case[n] for n in names])
    return [o.numpy() for o in out]


def _file_opset(path: str) -> Optional[int]:
    import onnx
    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _write_onnx(ep, module: DeployModule, args, path: str, opset: Optional[int], report: ExportReport) -> None:
    """ONNX through the torch.export-based exporter; for an opset it cannot write (it converts down from 18
    with onnx's version converter, silently keeping 18 when that fails) through torch's TorchScript-based
    exporter. The opset actually written is checked."""
    try:
        import onnx  # noqa: F401  (both are needed by torch.onnx.export)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({e}): "
                          "pip install onnx onnxscript onnxruntime") from None
    target = opset or DEFAULT_OPSET
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
    errors = []
    try:
        with _quiet():
            program = torch.onnx.export(ep, (), None, dynamo=True, opset_version=target,
                                        input_names=module.input_names,
                                        output_names=module.graph_output_names, external_data=big, optimize=True)
            program.save(path, external_data=big)
        written = _file_opset(path)
        if written == target:
            report.onnx, report.opset = path, written
            return
        errors.append(f"the torch.export-based exporter wrote opset {written}")
    except Exception as e:  # noqa: BLE001
        errors.append(f"the torch.export-based exporter failed: {_exporter_reason(ep, module, e)}")
    axes = {}
    for name in module.input_names:
        dyn = report.dynamic.get(name, [])
        if dyn:
            axes[name] = {a: f"{name}_{'NCHW'[a] if a < 4 else a}" for a in dyn}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, args, path, dynamo=False, opset_version=target,
                              input_names=module.input_names, output_names=module.graph_output_names,
                              dynamic_axes=axes or None)
        written = _file_opset(path)
        if written == target:
            report.onnx, report.opset = path, written
            report.notes.append(f"opset {target} written by torch's TorchScript-based exporter")
            return
        errors.append(f"the TorchScript-based exporter wrote opset {written}")
    except Exception as e:  # noqa: BLE001
        errors.append(f"the TorchScript-based exporter failed: {_first_line(e)}")
    with contextlib.suppress(OSError):
        os.unlink(path)
    raise ExportError(f"cannot write ONNX opset {target}: " + "; ".join(errors))


def _exporter_reason(ep, module: DeployModule, e: Exception) -> str:
    """The ONNX exporter's own summary of a failure, prefixed with the Caffe layer whose graph node failed
    (found through the node's ``nn_module_stack``)."""
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    summary = re.search(r"<class '[^']*?(\w+)'>: (.+)", text)
    reason = f"{summary.group(1)}: {summary.group(2).strip()}" if summary else _first_line(e)
    node_name = re.search(r"translating node %(\w+)", text)
    if node_name:
        keys = {n.key: n for n in module.net.nodes}
        for fx_node in ep.graph.nodes:
            if fx_node.name != node_name.group(1):
                continue
            for path, _ in reversed(list((fx_node.meta.get("nn_module_stack") or {}).values())):
                tail = re.split(r"(?:^|\.)(?:net|swapped)\.", str(path))
                if len(tail) > 1 and tail[-1].split(".")[0] in keys:
                    layer = keys[tail[-1].split(".")[0]]
                    return f"{layer.where}layer '{layer.name}' ({layer.type}): {reason}"
    return reason


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
