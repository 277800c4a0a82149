"""Writing nets in Python: a NetSpec DSL in the style of pycaffe's ``caffe.NetSpec``.

::

    from netspec.authoring.dsl import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Python(module="netspec.data.seg", layer="SegDataLayer", ntop=2,
                               param_str="{'source': 'data/demo/train'}")
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=16, pad=1,
                            param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                            weight_filler=dict(type="msra"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.loss = L.SoftmaxWithLoss(n.pool1, n.label, ignore_label=255)
    text = netspec.formats.prototxt.to_text(n.to_proto())

Semantics follow Caffe's ``net_spec.py`` (the reference for what a NetSpec net means):

* ``L.<Type>(*bottoms, **kwargs)`` makes a layer of that type string. It returns one top, a tuple
  of tops when ``ntop`` > 1, or the layer itself when ``ntop=0`` (a layer without tops).
* A layer is named after its first top, and a top after the NetSpec attribute it was assigned
  to. Tops never assigned get ``<Type><k>`` names, ``k`` counting per type from 1 (``Crop1``);
  so do layers whose first top is unnamed. ``name=`` sets the layer name explicitly (duplicate
  layer names are allowed, as in Caffe).
* ``in_place=True`` makes the layer's tops its bottoms (``ReLU`` on ``conv1`` writes ``conv1``).
* Layers are emitted bottoms-first, in the order the NetSpec attributes were assigned.

Keyword arguments are routed with the schema (descriptor introspection, so a fork's schema
loaded with :func:`netspec.proto.load_proto` works too):

1. a field of ``LayerParameter`` itself (``param``, ``include``, ``loss_weight``,
   ``propagate_down``, ``convolution_param``, ``name`` ...) is set on the layer;
2. otherwise the field goes to the type's own parameter message (``Convolution`` and
   ``Deconvolution`` -> ``convolution_param``, ``Pooling`` -> ``pooling_param`` ...) when that
   message has it -- for loss layers (``*Loss``) then ``loss_param``; data layers (``*Data``)
   look in ``transform_param`` first;
3. otherwise to the one ``*_param`` message that has a field of that name (``weight_filler`` ->
   ``convolution_param``, ``module`` -> ``python_param``); a name several messages share is an
   error that lists them, so nothing is guessed.

Values: ``dict`` for a message, a list for a repeated field (a single value for a repeated field
is one element), enum names as strings or numbers (``pool="MAX"`` or ``P.Pooling.MAX``). Every
keyword is checked when the layer is made, so a typo fails on the line that made it.
"""
from collections import Counter, OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .. import proto
from ..errors import NetspecError

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "DSLError",
           "param_field_for_type", "assign_fields"]


class DSLError(NetspecError, TypeError):
    """A NetSpec layer was given a keyword or value the schema does not accept."""


# ------------------------------------------------------------------------------------------------
# Schema introspection


# Types whose parameters live in a message not named after them.
_PARAM_ALIASES = {
    "Deconvolution": "convolution_param",
    "Im2col": "convolution_param",
    "SoftmaxWithLoss": "softmax_param",
    "ImageData": "image_data_param",
    "WindowData": "window_data_param",
    "HDF5Data": "hdf5_data_param",
    "HDF5Output": "hdf5_output_param",
    "DummyData": "dummy_data_param",
    "MemoryData": "memory_data_param",
    "InnerProduct": "inner_product_param",
    "BatchNorm": "batch_norm_param",
    "ArgMax": "argmax_param",
    "ContrastiveLoss": "contrastive_loss_param",
    "HingeLoss": "hinge_loss_param",
    "InfogainLoss": "infogain_loss_param",
    "Parameter": "parameter_param",
    "SPP": "spp_param",
    "LSTM": "recurrent_param",
    "RNN": "recurrent_param",
}
# LayerParameter fields the graph owns: set from bottoms/tops/the call, never from a keyword.
_GRAPH_FIELDS = ("type", "bottom", "top")

_schema_cache: Dict[int, "_Schema"] = {}


def _is_repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _is_message(fd) -> bool:
    return fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)


class _Schema:
    """What the DSL needs to know of one ``caffe_pb2`` module."""

    def __init__(self, pb2):
        self.pb2 = pb2
        self.layer = pb2.LayerParameter.DESCRIPTOR
        # every LayerParameter field holding a *_param message: name -> message descriptor
        self.param_fields = OrderedDict(
            (fd.name, fd.message_type) for fd in self.layer.fields
            if fd.name.endswith("_param") and _is_message(fd) and not _is_repeated(fd))
        # "Convolution" -> "convolution_param", by the message's name ("ConvolutionParameter")
        self.type_param = {}
        for name, desc in self.param_fields.items():
            if desc.name.endswith("Parameter"):
                self.type_param.setdefault(desc.name[:-len("Parameter")], name)
        for type_name, field in _PARAM_ALIASES.items():
            if field in self.param_fields:
                self.type_param.setdefault(type_name, field)
        # field name -> [param fields whose message has it]
        self.owners: Dict[str, List[str]] = {}
        for name, desc in self.param_fields.items():
            for fd in desc.fields:
                self.owners.setdefault(fd.name, []).append(name)


def _schema() -> _Schema:
    pb2 = proto.pb2()
    s = _schema_cache.get(id(pb2))
    if s is None or s.pb2 is not pb2:
        s = _schema_cache[id(pb2)] = _Schema(pb2)
    return s


def param_field_for_type(type_name: str) -> Optional[str]:
    """The ``LayerParameter`` field holding ``type_name``'s own parameters (``"Deconvolution"`` ->
    ``"convolution_param"``), or ``None`` for types without one (``ReLU`` has ``relu_param``;
    ``Split`` has none)."""
    return _schema().type_param.get(type_name)


def _family(type_name: str, own: Optional[str]) -> List[str]:
    """The parameter messages a type reads, in the order a keyword is looked up in them.

    Data layers read ``transform_param`` first (``DataParameter``'s ``scale``/``mean_file``/
    ``crop_size``/``mirror`` are deprecated copies that Caffe upgrades into it); loss layers
    read ``loss_param`` after their own message."""
    fields = [own] if own else []
    if type_name.endswith("Data"):
        fields.insert(0, "transform_param")
    if type_name.endswith("Loss"):
        fields.append("loss_param")
    return fields


def _route(type_name: str, key: str) -> Optional[str]:
    """Where keyword ``key`` of a ``type_name`` layer goes: ``None`` for LayerParameter itself,
    else the name of the ``*_param`` field."""
    s = _schema()
    if key in s.layer.fields_by_name:
        if key in _GRAPH_FIELDS:
            raise DSLError(f"L.{type_name}(): '{key}' is set by the graph (bottoms are the "
                           "positional arguments, tops the NetSpec names), not by a keyword")
        return None
    own = s.type_param.get(type_name)
    for field in _family(type_name, own):
        if field in s.param_fields and key in s.param_fields[field].fields_by_name:
            return field
    owners = s.owners.get(key, [])
    if len(owners) == 1:
        return owners[0]
    if not owners:
        hint = f" ({own} has: {', '.join(f.name for f in s.param_fields[own].fields)})" if own else ""
        raise DSLError(f"L.{type_name}(): no field '{key}' in LayerParameter or in any *_param "
                       f"message{hint}")
    raise DSLError(f"L.{type_name}(): '{key}' is a field of several parameter messages "
                   f"({', '.join(owners)}); name the one you mean, e.g. "
                   f"{owners[0]}=dict({key}=...)")


# ------------------------------------------------------------------------------------------------
# Assigning Python values to protobuf fields


def _scalar(fd, value, where: str):
    if fd.type == FieldDescriptor.TYPE_ENUM:
        if isinstance(value, str):
            ev = fd.enum_type.values_by_name.get(value)
            if ev is None:
                raise DSLError(f"{where}: '{value}' is not a value of {fd.enum_type.name} "
                               f"({', '.join(v.name for v in fd.enum_type.values)})")
            return ev.number
        if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
            raise DSLError(f"{where}: expected an enum name or number, got {value!r}")
        number = int(value)
        if number not in fd.enum_type.values_by_number:
            raise DSLError(f"{where}: {number} is not a value of {fd.enum_type.name}")
        return number
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, (bool, int)) and type(value).__name__ != "bool_":
            raise DSLError(f"{where}: expected a bool, got {value!r}")
        return bool(value)
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if isinstance(value, (str, bytes)):
            raise DSLError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if fd.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise DSLError(f"{where}: expected a string, got {value!r}")
        return value
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return value.encode() if isinstance(value, str) else bytes(value)
    # integer types (numpy integers included)
    if isinstance(value, (bool, str, bytes, float)) or not hasattr(value, "__index__"):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise DSLError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _fill_message(msg: Message, value, where: str):
    if isinstance(value, Message):
        if value.DESCRIPTOR.full_name != msg.DESCRIPTOR.full_name:
            raise DSLError(f"{where}: expected {msg.DESCRIPTOR.name}, got {value.DESCRIPTOR.name}")
        msg.Clear()  # by bytes: the value may come from another pool (load_proto's schema)
        msg.MergeFromString(value.SerializeToString())
        return
    if not isinstance(value, dict):
        raise DSLError(f"{where}: expected a dict (or {msg.DESCRIPTOR.name}) for a message field, "
                       f"got {value!r}")
    assign_fields(msg, value, where)


def _assign(msg: Message, key: str, value, where: str):
    fd = msg.DESCRIPTOR.fields_by_name.get(key)
    if fd is None:
        raise DSLError(f"{where}: {msg.DESCRIPTOR.name} has no field '{key}' (fields: "
                       f"{', '.join(f.name for f in msg.DESCRIPTOR.fields)})")
    here = f"{where}.{key}"
    if _is_repeated(fd):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        field = getattr(msg, key)
        if _is_message(fd):
            for v in values:
                _fill_message(field.add(), v, here)
        else:
            field.extend(_scalar(fd, v, here) for v in values)
    elif _is_message(fd):
        _fill_message(getattr(msg, key), value, here)
    else:
        setattr(msg, key, _scalar(fd, value, here))


def assign_fields(msg: Message, values: dict, where: Optional[str] = None) -> Message:
    """Set ``msg``'s fields from a dict (nested dicts for messages, lists for repeated fields,
    enum names or numbers); returns ``msg``."""
    where = where or msg.DESCRIPTOR.name
    for key, value in values.items():
        _assign(msg, key, value, where)
    return msg


# ------------------------------------------------------------------------------------------------
# The graph


class Top:
    """One output blob of a layer (``fn.tops[n]``), what ``L.<Type>(...)`` returns."""

    __slots__ = ("fn", "n")

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with this top's layer and everything it depends on."""
        return to_proto(self)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer: its type, bottoms (``inputs``) and the keyword arguments it was given.

    ``param_proto`` is a ``LayerParameter`` holding what the keywords set (no name, type, bottoms
    or tops); tools such as :mod:`netspec.authoring.coord_map` read a layer's settings from it.
    """

    def __init__(self, type_name: str, inputs: Iterable[Top], kwargs: dict):
        self.type_name = type_name
        self.inputs: Tuple[Top, ...] = tuple(inputs)
        for i, x in enumerate(self.inputs):
            if not isinstance(x, Top):
                raise DSLError(f"L.{type_name}(): bottom {i} is {x!r}, not a top made by another "
                               "layer (tops are what L.<Type>(...) returns)")
        kwargs = dict(kwargs)
        self.ntop = kwargs.pop("ntop", 1)
        self.in_place = bool(kwargs.pop("in_place", False))
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise DSLError(f"L.{type_name}(): ntop must be a non-negative integer, got {self.ntop!r}")
        if self.in_place and self.ntop != len(self.inputs):
            raise DSLError(f"L.{type_name}(in_place=True) needs as many tops as bottoms "
                           f"({len(self.inputs)} bottoms, ntop={self.ntop})")
        self.params = kwargs
        self.param_proto = self._build(kwargs)
        self.tops: Tuple[Top, ...] = tuple(Top(self, n) for n in range(self.ntop))

    @classmethod
    def from_layer(cls, layer, inputs: Iterable[Top]) -> "Function":
        """A Function standing for an existing ``LayerParameter`` (bottoms given as ``inputs``)."""
        fn = cls.__new__(cls)
        fn.type_name = layer.type
        fn.inputs = tuple(inputs)
        fn.ntop = len(layer.top)
        fn.in_place = list(layer.top) == list(layer.bottom)[:len(layer.top)] and bool(layer.top)
        fn.params = {}
        fn.param_proto = proto.pb2().LayerParameter()
        fn.param_proto.CopyFrom(layer)
        for key in _GRAPH_FIELDS:
            fn.param_proto.ClearField(key)
        fn.tops = tuple(Top(fn, n) for n in range(fn.ntop))
        return fn

    def _build(self, kwargs):
        lp = proto.pb2().LayerParameter()
        where = f"L.{self.type_name}()"
        for key, value in kwargs.items():
            target = _route(self.type_name, key)
            if target is None:
                _assign(lp, key, value, where)
            else:
                _assign(getattr(lp, target), key, value, f"{where}.{target}")
        return lp

    @property
    def explicit_name(self) -> Optional[str]:
        return self.param_proto.name if self.param_proto.HasField("name") else None

    def __repr__(self):
        return f"<{self.type_name} layer>"


class _Emitter:
    """Turns a graph of Functions into LayerParameters, naming what the user did not."""

    def __init__(self, names: Dict[object, str]):
        self.names = dict(names)
        self.counts: Counter = Counter()
        self.layers: "OrderedDict[Function, object]" = OrderedDict()

    def _auto(self, type_name: str) -> str:
        self.counts[type_name] += 1
        return f"{type_name}{self.counts[type_name]}"

    def top_name(self, top: Top) -> str:
        if top not in self.names:
            self.names[top] = self._auto(top.fn.type_name)
        return self.names[top]

    def layer_name(self, fn: Function) -> str:
        if fn in self.names:
            return self.names[fn]
        name = self.top_name(fn.tops[0]) if fn.tops else self._auto(fn.type_name)
        self.names[fn] = name
        return name

    def emit(self, fn: Function):
        if fn in self.layers:
            return
        # Iterative post-order, so deep nets do not hit the recursion limit.
        stack = [(fn, False)]
        while stack:
            f, ready = stack.pop()
            if f in self.layers:
                continue
            if not ready:
                stack.append((f, True))
                for x in reversed(f.inputs):
                    if x.fn not in self.layers:
                        stack.append((x.fn, False))
                continue
            self.layers[f] = self._layer(f)

    def _layer(self, fn: Function):
        lp = proto.pb2().LayerParameter()
        bottoms = [self.layers[x.fn].top[x.n] for x in fn.inputs]
        tops = bottoms[:fn.ntop] if fn.in_place else [self.top_name(t) for t in fn.tops]
        lp.name = self.layer_name(fn)
        lp.type = fn.type_name
        lp.bottom.extend(bottoms)
        lp.top.extend(tops)
        lp.MergeFrom(fn.param_proto)  # an explicit name= overrides the derived one
        return lp


def to_proto(*tops: Union[Top, Function], names: Optional[Dict[object, str]] = None):
    """A ``NetParameter`` holding the layers of ``tops`` and all they depend on."""
    emitter = _Emitter(names or {})
    for t in tops:
        fn = t.fn if isinstance(t, Top) else t
        if not isinstance(fn, Function):
            raise DSLError(f"to_proto(): {t!r} is not a top or layer")
        emitter.emit(fn)
    net = proto.pb2().NetParameter()
    net.layer.extend(emitter.layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) name their blobs and layers.

    ``n['conv1']`` works as well as ``n.conv1``; ``to_proto()`` returns the ``NetParameter``.
    """

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):
            raise DSLError(f"NetSpec.{name}: expected a top made by L.<Type>(...), got {value!r}")
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __delattr__(self, name):
        try:
            del self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        return self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self):
        return list(self.tops)

    def to_proto(self):
        names = {value: name for name, value in self.tops.items()}
        return to_proto(*self.tops.values(), names=names)


class _Layers:
    """``L.<Type>(*bottoms, **kwargs)`` for any Caffe type string."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        make.__name__ = type_name
        make.__qualname__ = f"layers.{type_name}"
        return make


class _Params:
    """``P.Pooling.MAX``, ``P.Eltwise.SUM``: the ``<Type>Parameter`` message classes, whose
    attributes are the enum values (``P.Deconvolution`` is ``ConvolutionParameter``)."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        pb2 = proto.pb2()
        cls = getattr(pb2, type_name + "Parameter", None)
        if cls is None:
            field = _schema().type_param.get(type_name)
            if field is not None:
                cls = getattr(pb2, _schema().param_fields[field].name, None)
        if cls is None:
            raise AttributeError(f"no parameter message for layer type '{type_name}' "
                                 f"(no {type_name}Parameter in the schema)")
        return cls


layers = _Layers()
params = _Params()
