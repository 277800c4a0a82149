"""Helpers every layer builder shares: naming the layer in errors, Caffe's axis rule, value checks, and the
small nets that registry entries give as ``example`` for the registry sweep (tests/test_all_layers.py)."""
import functools
from typing import Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..errors import LayerError


def ident(lp, ctx=None) -> str:
    """``<file>:<line>: layer '<name>' (<Type>)`` for messages."""
    return f"{getattr(ctx, 'where', '') or ''}layer '{lp.name}' ({lp.type})"


def fail(lp, ctx, msg: str) -> LayerError:
    """A LayerError naming the layer as the net reports it: ``raise fail(lp, ctx, "...")``."""
    return LayerError(f"{ident(lp, ctx)}: {msg}")


def canonical_axis(lp, ctx, axis: int, ndim: int, field: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex: -ndim <= axis < ndim, negative counts from the end."""
    if not -ndim <= axis < ndim:
        raise fail(lp, ctx, f"{field} {axis} is out of range for a {ndim}-axis bottom "
                            f"(allowed {-ndim}..{ndim - 1})")
    return axis + ndim if axis < 0 else axis


def shape_str(s) -> str:
    return str(tuple(int(d) for d in s))


def concrete(t: torch.Tensor) -> bool:
    """True when ``t`` holds real values we may inspect (not compiling, not a fake or meta tensor).

    Value checks (label ranges, indices) run only then: under torch.compile / FakeTensor they are skipped.
    """
    if torch.compiler.is_compiling() or isinstance(t, FakeTensor) or t.device.type == "meta":
        return False
    return True


def eager(fn):
    """``torch.compiler.disable(fn)`` (torch.compile runs it eagerly: numpy, data-dependent sizes), made on
    first use under compilation: decorating at import would import torch._dynamo, about 1 s of every start-up."""
    disabled = []

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(fn))
            return disabled[0](*args, **kwargs)
        return fn(*args, **kwargs)
    return run


def _dims(shape: Sequence[int]) -> str:
    return " ".join(f"dim: {d}" for d in shape)


def example_net(type_name: str, fields: str = "", *, inputs: Sequence[Sequence[int]] = ((2, 4, 5, 6),),
                names: Sequence[str] = (), tops: int = 1, before: str = "", bottoms: Sequence[str] = (),
                propagate_down=()) -> str:
    """A one-layer test net: an Input layer with blobs ``names`` (default ``x``, ``x1``, ``x2``...) of the
    given shapes, optional layers ``before``, then layer ``l`` of ``type_name`` with ``fields``, reading
    ``bottoms`` (default: every input blob) and writing tops ``y``, ``y1``, ...

    The sweep fills an input named ``label`` with class indices below ``x``'s channel count, ``sim`` with 0/1,
    anything else with N(0, 1)."""
    names = list(names) or ["x"] + [f"x{i}" for i in range(1, len(inputs))]
    shapes = " ".join(f"shape {{ {_dims(s)} }}" for s in inputs)
    head = (f'layer {{ name: "in" type: "Input" {" ".join(f"top: {n!r}" for n in names)} '
            f'input_param {{ {shapes} }} }}\n').replace("'", '"') if inputs else ""
    bots = " ".join(f'bottom: "{b}"' for b in (bottoms or names))
    outs = " ".join(f'top: "{t}"' for t in ["y"] + [f"y{i}" for i in range(1, tops)])
    prop = " ".join(f"propagate_down: {str(p).lower()}" for p in propagate_down)
    return f'{head}{before}layer {{ name: "l" type: "{type_name}" {bots} {outs} {prop} {fields} }}\n'
