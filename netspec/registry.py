"""The layer-builder registry, keyed by Caffe's exact type strings (as Caffe's layer_factory).

A builder is a pure function ``(LayerParameter, bottom_shapes, ctx) -> nn.Module``. Its entry also declares
everything the rest of netspec needs to know about the type, so adding a layer touches one file:
arity (checked by the net before any builder runs), ``loss``, ``pure`` (activation checkpointing may rerun
it), ``coord`` (spatial coordinate map for Crop offsets), ``export`` (ONNX support), ``blobs`` (weight
conversion without a net), ``example`` (a net for the registry sweep test, with ``backward``) and drawing
hints (``colour``, ``detail``).
"""
import difflib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from .errors import UnknownLayerError

Arity = Union[int, Tuple[int, Optional[int]]]  # exact count, or (min, max) with max None = unbounded
DOCS = "docs/architecture.md#add-a-layer"


@dataclass(frozen=True)
class Export:
    """``refuse``: why the type cannot be exported ("" = it can). ``min_opset`` (int, or module -> int) and
    ``needs``: lowest ai.onnx opset with Caffe's semantics, and the ONNX feature. ``deploy(module, dynamic_hw)``:
    a stand-in module, None (export as is), a str (why it is traced at the example size only), or raises
    ValueError (why it cannot be exported)."""
    refuse: str = ""
    min_opset: Union[int, Callable] = 0
    needs: str = ""
    deploy: Optional[Callable] = None


@dataclass(frozen=True)
class Entry:
    type: str
    builder: Callable
    bottoms: Tuple[int, Optional[int]]
    tops: Tuple[int, Optional[int]]
    loss: bool = False  # Caffe LossLayer: top 0 gets loss_weight 1 when the prototxt gives none
    pure: bool = False  # forward is a function of bottoms and params only: safe to recompute
    reshape_like: bool = False  # every top is shaped as bottom 0 (Caffe's top[i]->ReshapeLike(*bottom[0]))
    coord: Union[None, str, Callable] = None  # "identity", or lp -> CoordMap of bottom 0 -> top 0
    export: Export = Export()
    blobs: Union[None, Tuple[str, ...], Callable] = None  # param names in Caffe blob order (or lp -> names)
    example: Optional[str] = None  # a small net using the type ("" = tested elsewhere, see the sweep)
    backward: bool = True  # Caffe implements Backward for the type
    colour: Optional[str] = None  # in drawings (tools/draw_net.py)
    detail: Optional[Callable] = None  # lp -> key hyper-parameters as text, for drawings


def _range(arity: Arity) -> Tuple[int, Optional[int]]:
    return (arity, arity) if isinstance(arity, int) else (arity[0], arity[1])


class Registry:
    def __init__(self, what: str):
        self._what = what
        self._entries = {}

    def register(self, *types: str, bottoms: Arity = 1, tops: Arity = 1, **facts):
        def deco(builder):
            for t in types:
                if t in self._entries:
                    raise ValueError(f"{self._what} type '{t}' is already registered "
                                     f"(by {self._entries[t].builder.__module__})")
                self._entries[t] = Entry(t, builder, *map(_range, (bottoms, tops)), **facts)
            return builder
        return deco

    def get(self, type_name: str, where: str = "") -> Entry:
        try:
            return self._entries[type_name]
        except KeyError:
            near = difflib.get_close_matches(type_name, self._entries, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise UnknownLayerError(
                f"{where}Unknown {self._what} type '{type_name}'.{hint} To add it, register a builder with "
                f"netspec.register('{type_name}') ({DOCS}). Known types: {', '.join(sorted(self._entries))}"
            ) from None

    def find(self, type_name: str) -> Optional[Entry]:
        return self._entries.get(type_name)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


LAYERS = Registry("layer")
register = LAYERS.register
