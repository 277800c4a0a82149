"""The layer-builder registry, keyed by Caffe's exact type strings (as Caffe's layer_factory).

A builder is a pure function ``(LayerParameter, bottom_shapes, ctx) -> nn.Module``. Each entry declares how
many bottoms and tops the type takes, so the net checks arity in one place before calling any builder.
"""
import difflib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from .errors import UnknownLayerError

Arity = Union[int, Tuple[int, Optional[int]]]  # exact count, or (min, max) with max None = unbounded


@dataclass(frozen=True)
class Entry:
    type: str
    builder: Callable
    bottoms: Tuple[int, Optional[int]]
    tops: Tuple[int, Optional[int]]
    loss: bool  # Caffe LossLayer: top 0 gets loss_weight 1 when the prototxt gives none


def _range(arity: Arity) -> Tuple[int, Optional[int]]:
    return (arity, arity) if isinstance(arity, int) else (arity[0], arity[1])


def describe(arity: Tuple[int, Optional[int]]) -> str:
    lo, hi = arity
    if lo == hi:
        return str(lo)
    return f"at least {lo}" if hi is None else f"{lo} to {hi}"


def accepts(arity: Tuple[int, Optional[int]], n: int) -> bool:
    lo, hi = arity
    return n >= lo and (hi is None or n <= hi)


class Registry:
    def __init__(self, what: str):
        self._what = what
        self._entries = {}

    def register(self, *types: str, bottoms: Arity = 1, tops: Arity = 1, loss: bool = False):
        def deco(builder):
            for t in types:
                if t in self._entries:
                    raise ValueError(f"{self._what} type '{t}' is already registered "
                                     f"(by {self._entries[t].builder.__module__})")
                self._entries[t] = Entry(t, builder, _range(bottoms), _range(tops), loss)
            return builder
        return deco

    def get(self, type_name: str, where: str = "") -> Entry:
        try:
            return self._entries[type_name]
        except KeyError:
            near = difflib.get_close_matches(type_name, self._entries, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise UnknownLayerError(
                f"{where}Unknown {self._what} type '{type_name}'.{hint} "
                f"Known types: {', '.join(sorted(self._entries))}") from None

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


LAYERS = Registry("layer")
register = LAYERS.register
