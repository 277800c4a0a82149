"""Upgrading deprecated Caffe net and solver definitions, as ``upgrade_proto.cpp`` does.

Caffe applies these passes, in this order, to every net it reads, text or binary
(``UpgradeNetAsNeeded``, BVLC master 9b89154):

1. **V0 -> V1** if any ``layers { layer { ... } }`` (``V0LayerParameter``) is present:
   "padding" layers are folded into the pad of the conv/pool layer they feed, lowercase
   type strings become the V1 enum, flat V0 fields move into the ``*_param`` messages.
2. **Data transformation**: the scale / mean_file / crop_size / mirror fields of V1
   Data, ImageData and WindowData params move into ``transform_param``.
3. **V1 -> V2** if ``layers`` is non-empty (fatal if ``layer`` is present too): enum
   type -> string, ``blobs_lr`` / ``weight_decay`` / ``param`` / ``blob_share_mode`` ->
   ``ParamSpec``; blobs copied unchanged (legacy 4-D dims kept), every ``*_param`` copied.
4. **Input fields**: ``input`` + ``input_dim`` / ``input_shape`` -> one ``Input`` layer
   named "input", moved to the front (an ``input`` with no dims is just dropped: a
   legacy caffemodel).
5. **BatchNorm**: a BatchNorm layer with exactly 3 ``param`` specs (the old way to
   freeze its statistics) gets lr_mult 0 and decay_mult 0 on all three (BVLC master;
   the 2016 version of this pass removed the specs instead).

The passes return Caffe's log lines as strings (the same words as glog prints,
without the glog prefix). Caffe's ``LOG(FATAL)`` / ``CHECK`` failures raise
:class:`~netspec.errors.PrototxtError`.

Solvers (``UpgradeSolverAsNeeded``): the ``solver_type`` enum becomes the ``type`` string.
"""

from __future__ import annotations

import logging

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

from netspec.formats import binary
from netspec import proto
from netspec.formats.binary import CaffeModel
from netspec.errors import PrototxtError
from netspec.proto import caffe_pb2  # annotations only: classes come from the net's schema

log = logging.getLogger("netspec")

__all__ = [
    "needs_upgrade",
    "upgrade_net",
    "upgrade_caffemodel",
    "upgrade_solver",
    "solver_needs_upgrade",
    "v1_layer_type_name",
    "V1_LAYER_TYPE_NAMES",
]

#: ``UpgradeV1LayerType``: V1 enum name -> layer type string.
V1_LAYER_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    # DeepLab v1 (netspec schema extensions)
    "IMAGE_SEG_DATA": "ImageSegData",
    "SEG_ACCURACY": "SegAccuracy",
    "INTERP": "Interp",
    "MAT_WRITE": "MatWrite",
}

# ``UpgradeV0LayerType``: V0 type string -> V1 enum name ("padding" layers are folded away
# before this table is consulted).
_V0_LAYER_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# ``UpgradeV0LayerParameter``, in Caffe's order: V0 field -> {V0 type: (V1 *_param field
# or None for a top-level V1 field, target field)}; "*" = any type. A V0 field set on a
# type not listed is logged "Unknown parameter <name> for layer type <type>".
_V0_FIELDS = [
    ("num_output", {"conv": ("convolution_param", "num_output"),
                    "innerproduct": ("inner_product_param", "num_output")}),
    ("biasterm", {"conv": ("convolution_param", "bias_term"),
                  "innerproduct": ("inner_product_param", "bias_term")}),
    ("weight_filler", {"conv": ("convolution_param", "weight_filler"),
                       "innerproduct": ("inner_product_param", "weight_filler")}),
    ("bias_filler", {"conv": ("convolution_param", "bias_filler"),
                     "innerproduct": ("inner_product_param", "bias_filler")}),
    ("pad", {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")}),
    ("kernelsize", {"conv": ("convolution_param", "kernel_size"),
                    "pool": ("pooling_param", "kernel_size")}),
    ("group", {"conv": ("convolution_param", "group")}),
    ("stride", {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")}),
    ("pool", {"pool": ("pooling_param", "pool")}),
    ("dropout_ratio", {"dropout": ("dropout_param", "dropout_ratio")}),
    ("local_size", {"lrn": ("lrn_param", "local_size")}),
    ("alpha", {"lrn": ("lrn_param", "alpha")}),
    ("beta", {"lrn": ("lrn_param", "beta")}),
    ("k", {"lrn": ("lrn_param", "k")}),
    ("source", {"data": ("data_param", "source"),
                "hdf5_data": ("hdf5_data_param", "source"),
                "images": ("image_data_param", "source"),
                "window_data": ("window_data_param", "source"),
                "infogain_loss": ("infogain_loss_param", "source")}),
    ("scale", {"*": ("transform_param", "scale")}),
    ("meanfile", {"*": ("transform_param", "mean_file")}),
    ("batchsize", {"data": ("data_param", "batch_size"),
                   "hdf5_data": ("hdf5_data_param", "batch_size"),
                   "images": ("image_data_param", "batch_size"),
                   "window_data": ("window_data_param", "batch_size")}),
    ("cropsize", {"*": ("transform_param", "crop_size")}),
    ("mirror", {"*": ("transform_param", "mirror")}),
    ("rand_skip", {"data": ("data_param", "rand_skip"),
                   "images": ("image_data_param", "rand_skip")}),
    ("shuffle_images", {"images": ("image_data_param", "shuffle")}),
    ("new_height", {"images": ("image_data_param", "new_height")}),
    ("new_width", {"images": ("image_data_param", "new_width")}),
    ("concat_dim", {"concat": ("concat_param", "concat_dim")}),
    ("det_fg_threshold", {"window_data": ("window_data_param", "fg_threshold")}),
    ("det_bg_threshold", {"window_data": ("window_data_param", "bg_threshold")}),
    ("det_fg_fraction", {"window_data": ("window_data_param", "fg_fraction")}),
    ("det_context_pad", {"window_data": ("window_data_param", "context_pad")}),
    ("det_crop_mode", {"window_data": ("window_data_param", "crop_mode")}),
    ("hdf5_output_param", {"hdf5_output": (None, "hdf5_output_param")}),
]
# Caffe's error text names a few V0 fields differently.
_V0_FIELD_LOG_NAME = {"shuffle_images": "shuffle"}

# V1 data layers whose params carried the transformation fields (NetNeedsDataUpgrade).
_DATA_UPGRADE = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                 "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                      "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}

_BOTH_LAYER_FIELDS = (
    "Refusing to upgrade inconsistent NetParameter input; the definition includes both "
    "'layer' and 'layers' fields. The current format defines 'layer' fields with string type "
    "like layer { type: 'Layer' ... } and not layers { type: LAYER ... }. Manually switch the "
    "definition to 'layer' format to continue.")


class _Schema:
    """Message classes of the schema a message belongs to: the bundled caffe_pb2 or a
    fork's caffe.proto loaded at run time (netspec.proto.load_proto); messages of two
    schemas cannot be copied into each other."""

    def __init__(self, msg):
        self._file = msg.DESCRIPTOR.file

    def __getattr__(self, name: str):
        cls = message_factory.GetMessageClass(self._file.message_types_by_name[name])
        setattr(self, name, cls)
        return cls


def _enum_name(msg, enum: str, value: int) -> str:
    """Name of ``value`` in the enum ``enum`` nested in ``msg``'s type (message or class)."""
    values = msg.DESCRIPTOR.enum_types_by_name[enum].values_by_number
    if value not in values:
        raise PrototxtError(f"unknown {msg.DESCRIPTOR.name}.{enum} value {value}")
    return values[value].name


def _enum_value(msg, enum: str, name: str) -> int:
    return msg.DESCRIPTOR.enum_types_by_name[enum].values_by_name[name].number


def _is_repeated(fd) -> bool:
    is_rep = getattr(fd, "is_repeated", None)
    if is_rep is not None:
        return bool(is_rep)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _assign(msg, name: str, value) -> None:
    """``msg.name = value`` for scalars, CopyFrom for messages, append for repeated
    scalars (Caffe's ``add_x`` for the repeated conv pad / kernel_size / stride)."""
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, name).CopyFrom(value)
    elif _is_repeated(fd):
        getattr(msg, name).append(value)
    else:
        setattr(msg, name, value)


def v1_layer_type_name(v1_type: int) -> str:
    """``UpgradeV1LayerType``: a ``V1LayerParameter.LayerType`` value -> type string."""
    values = proto.pb2().V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"] \
        .values_by_number
    name = values[v1_type].name if v1_type in values else None
    if name not in V1_LAYER_TYPE_NAMES:
        raise PrototxtError(f"Unknown V1LayerParameter layer type: {v1_type}")
    return V1_LAYER_TYPE_NAMES[name]


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------


def _needs_v0(net) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def _data_param_name(layer) -> str | None:
    """The *_param holding deprecated transformation fields for a V1 data layer."""
    return _DATA_UPGRADE.get(_enum_name(layer, "LayerType", layer.type))


def _needs_data(net) -> bool:
    for layer in net.layers:
        param_name = _data_param_name(layer)
        if param_name and any(getattr(layer, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _needs_batch_norm(net) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Caffe's ``NetNeedsUpgrade``: any of the five passes has something to do."""
    return (_needs_v0(net) or len(net.layers) > 0 or _needs_data(net) or len(net.input) > 0
            or _needs_batch_norm(net))


def solver_needs_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    """Caffe's ``SolverNeedsTypeUpgrade``: the deprecated ``solver_type`` enum is set."""
    return solver.HasField("solver_type")


# ---------------------------------------------------------------------------
# the passes; each works in place. ``origin`` lists, per entry of net.layer, where its
# blobs came from: (field, index into the original field, slice of that layer's blobs)
# or None (the Input layer), so upgrade_caffemodel can carry the arrays along.
# ---------------------------------------------------------------------------


def _upgrade_v0_padding(net, v1_origin, pb) -> tuple[list, list]:
    """``UpgradeV0PaddingLayers``: drop "padding" layers, moving their pad into the
    conv / pool layer that reads their output. Returns (kept layers, their origins)."""
    kept, kept_origin = [], []
    last_top: dict[str, int] = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        current = None
        if v0.type != "padding":
            current = pb.V1LayerParameter()
            current.CopyFrom(conn)
            kept.append(current)
            kept_origin.append(v1_origin[i])
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise PrototxtError(f"Unknown blob input {blob} to layer {j}")
            top_idx = last_top[blob]
            if top_idx == -1:
                continue
            source = net.layers[top_idx]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool"):
                    raise PrototxtError("Padding layer input to non-convolutional / "
                                        f"non-pooling layer type {v0.type}")
                if len(conn.bottom) != 1:
                    raise PrototxtError("Conv Layer takes a single blob as input.")
                if len(source.bottom) != 1:
                    raise PrototxtError("Padding Layer takes a single blob as input.")
                if len(source.top) != 1:
                    raise PrototxtError("Padding Layer produces a single blob as output.")
                current.layer.pad = source.layer.pad
                current.bottom[j] = source.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return kept, kept_origin


def _upgrade_v0_layer(conn, log, pb) -> tuple[caffe_pb2.V1LayerParameter, bool]:
    """``UpgradeV0LayerParameter``: one V0 layer connection -> a V1LayerParameter."""
    ok = True
    out = pb.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out, ok
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    ltype = v0.type
    if v0.HasField("type"):
        if ltype not in _V0_LAYER_TYPES:
            raise PrototxtError(f"Unknown layer name: {ltype}")
        out.type = _enum_value(out, "LayerType", _V0_LAYER_TYPES[ltype])
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELDS:
        if not v0.HasField(v0_field):
            continue
        target = targets.get(ltype) or targets.get("*")
        if target is None:
            log.append(f"Unknown parameter {_V0_FIELD_LOG_NAME.get(v0_field, v0_field)} "
                       f"for layer type {ltype}")
            ok = False
            continue
        param_name, field_name = target
        value = getattr(v0, v0_field)
        if v0_field == "pool":  # V0 PoolMethod -> PoolingParameter.PoolMethod, by name
            value = _enum_value(pb.PoolingParameter, "PoolMethod",
                                _enum_name(v0, "PoolMethod", value))
        _assign(out if param_name is None else getattr(out, param_name), field_name, value)
    return out, ok


def _upgrade_v0_net(net, v1_origin, log) -> tuple[bool, list]:
    """``UpgradeV0Net``: returns (fully compatible, origins of the new ``layers``).
    Like Caffe, keeps only name, layers, input, input_dim and force_backward."""
    pb = _Schema(net)
    kept, kept_origin = _upgrade_v0_padding(net, v1_origin, pb)
    ok = True
    layers = []
    for conn in kept:
        layer, layer_ok = _upgrade_v0_layer(conn, log, pb)
        ok &= layer_ok
        layers.append(layer)
    name = net.name if net.HasField("name") else None
    inputs, input_dims = list(net.input), list(net.input_dim)
    force_backward = net.force_backward if net.HasField("force_backward") else None
    net.Clear()
    if name is not None:
        net.name = name
    for layer in layers:
        net.layers.add().CopyFrom(layer)
    net.input.extend(inputs)
    net.input_dim.extend(input_dims)
    if force_backward is not None:
        net.force_backward = force_backward
    return ok, kept_origin


def _upgrade_data_transformation(net) -> None:
    """``UpgradeNetDataTransformation``: move deprecated data-layer fields into
    ``transform_param``."""
    for layer in net.layers:
        param_name = _data_param_name(layer)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(layer.transform_param, f, getattr(param, f))
                param.ClearField(f)


def _upgrade_v1_layer(v1, log, pb) -> tuple[caffe_pb2.LayerParameter, bool]:
    """``UpgradeV1LayerParameter``."""
    ok = True
    out = pb.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    for rule in v1.include:
        out.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        out.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        out.type = v1_layer_type_name(v1.type)
    for blob in v1.blobs:
        out.blobs.add().CopyFrom(blob)

    def spec(i: int):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        # V1 DimCheckMode and ParamSpec.DimCheckMode share names (STRICT, PERMISSIVE).
        try:
            spec(i).share_mode = _enum_value(pb.ParamSpec, "DimCheckMode",
                                             _enum_name(v1, "DimCheckMode", mode))
        except (KeyError, PrototxtError):
            raise PrototxtError(f"Unknown blob_share_mode: {mode}") from None
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    # Every *_param message (transform_param and loss_param included) is copied verbatim.
    for fd, value in v1.ListFields():
        if fd.name == "softmaxloss_param":
            _upgrade_softmaxloss_param(v1, value, out, log)
        elif fd.name.endswith("_param") and fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(out, fd.name).CopyFrom(value)
    if v1.HasField("strict_dim") and not v1.strict_dim:  # DeepLab v1 (netspec schema extension)
        log.append(f"layer '{v1.name}': strict_dim: false dropped (DeepLab v1); weights must fit the layer's shape")
    if v1.HasField("layer"):
        log.append("Input NetParameter has V0 layer -- ignoring.")
        ok = False
    return out, ok


def _upgrade_softmaxloss_param(v1, p, out, log) -> None:
    """DeepLab v1's ``softmaxloss_param`` (netspec extension): its loss divides by the count of pixels not
    ignored, which is BVLC's VALID normalization, so one ``ignore_label`` becomes ``loss_param.ignore_label``."""
    where = f"layer '{v1.name}': softmaxloss_param"
    if p.HasField("weight_source"):
        raise PrototxtError(f"{where}.weight_source (per-class loss weights read from a file) is not supported: "
                            "give the weights as loss_param.class_weight instead")
    if len(p.ignore_label) > 1:
        raise PrototxtError(f"{where} ignores {len(p.ignore_label)} labels {list(p.ignore_label)}; "
                            "SoftmaxWithLoss ignores one (loss_param.ignore_label)")
    if len(p.ignore_label) == 1:
        if out.loss_param.HasField("ignore_label") and out.loss_param.ignore_label != p.ignore_label[0]:
            raise PrototxtError(f"{where}.ignore_label {p.ignore_label[0]} conflicts with loss_param.ignore_label "
                                f"{out.loss_param.ignore_label}")
        out.loss_param.ignore_label = p.ignore_label[0]
        log.append(f"{where}.ignore_label moved to loss_param.ignore_label (DeepLab v1)")


def _upgrade_v1_net(net, v1_origin, log) -> tuple[bool, list]:
    """``UpgradeV1Net``: ``layers`` -> ``layer``; returns (ok, origins of ``layer``)."""
    if len(net.layer) > 0:
        raise PrototxtError(_BOTH_LAYER_FIELDS)
    ok = True
    upgraded = []
    pb = _Schema(net)
    for i, v1 in enumerate(net.layers):
        layer, layer_ok = _upgrade_v1_layer(v1, log, pb)
        if not layer_ok:
            log.append(f"Upgrade of input layer {i} failed.")
            ok = False
        upgraded.append(layer)
    net.ClearField("layers")
    for layer in upgraded:
        net.layer.add().CopyFrom(layer)
    return ok, list(v1_origin)


def _upgrade_input(net, origin: list) -> list:
    """``UpgradeNetInput``: input fields -> an "input" Input layer placed first."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape and has_dim:  # net.cpp (before the Input layer): CHECK that only one of the two is given
        raise PrototxtError("Must specify either input_shape OR deprecated input_dim, not both (the net gives "
                            f"{len(net.input_shape)} input_shape and {len(net.input_dim)} input_dim values)")
    if has_shape or has_dim:
        layer = _Schema(net).LayerParameter(name="input", type="Input")
        layer.input_param.SetInParent()
        for i, blob in enumerate(net.input):
            layer.top.append(blob)
            if has_shape:
                if i >= len(net.input_shape):
                    raise PrototxtError(
                        f"input '{blob}' (#{i}) has no input_shape: {len(net.input)} inputs "
                        f"but {len(net.input_shape)} input_shape entries")
                layer.input_param.shape.add().CopyFrom(net.input_shape[i])
            else:
                if 4 * i + 4 > len(net.input_dim):
                    raise PrototxtError(
                        f"input '{blob}' (#{i}) has no input_dim: {len(net.input)} inputs need "
                        f"{4 * len(net.input)} input_dim values (4 each), found "
                        f"{len(net.input_dim)}")
                layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = list(net.layer)
        net.ClearField("layer")
        net.layer.add().CopyFrom(layer)
        for other in rest:
            net.layer.add().CopyFrom(other)
        origin = [None] + origin
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return origin


def _upgrade_batch_norm(net) -> None:
    """``UpgradeNetBatchNorm`` (BVLC master): 3 param specs -> lr_mult 0, decay_mult 0."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def _check_schema(net, source: str) -> None:
    """The passes write current-format fields (NetParameter.layer, LayerParameter.input_param, ...). An old
    fork's caffe.proto loaded with load_proto may lack them: say so instead of failing on a missing attribute."""
    layer = net.DESCRIPTOR.fields_by_name.get("layer")
    need = [("NetParameter", "layer", layer is None and (len(net.layers) > 0 or len(net.input) > 0))]
    if layer is not None:
        fields = layer.message_type.fields_by_name
        need.append(("LayerParameter", "input_param", "input_param" not in fields and len(net.input) > 0))
    missing = [f"{m}.{f}" for m, f, lacking in need if lacking]
    if missing:
        raise PrototxtError(
            f"{source}: the schema in use has no {', '.join(missing)}, which upgrading this net writes (an old "
            "Caffe fork's caffe.proto loaded with netspec.proto.load_proto / --proto). netspec reads the forks "
            "it knows with its own schema (docs/caffe_forks.md): drop --proto, or call "
            "netspec.proto.reset_proto()")


def _upgrade(net, source: str, v1_blob_split=None) -> tuple[list[str], list]:
    """``UpgradeNetAsNeeded`` on ``net`` in place; returns (log lines, origins).

    ``v1_blob_split[i]`` is the number of blobs of ``layers[i]`` itself (the arrays of a
    V0 layer's nested blobs follow them in :attr:`CaffeModel.v1_blobs`)."""
    _check_schema(net, source)
    log: list[str] = []
    n_v1 = len(net.layers)
    split = v1_blob_split if v1_blob_split is not None else [len(l.blobs) for l in net.layers]
    # Origin per V1 layer: its own blobs (a V0 upgrade switches to the nested ones).
    v1_origin = [("layers", i, slice(0, split[i])) for i in range(n_v1)]
    origin = [("layer", i, slice(None)) for i in range(len(net.layer))]

    if _needs_v0(net):
        log.append("Attempting to upgrade input file specified using deprecated "
                   f"V0LayerParameter: {source}")
        v0_origin = [("layers", i, slice(split[i], None) if net.layers[i].HasField("layer")
                      else slice(0, 0)) for i in range(n_v1)]
        ok, v1_origin = _upgrade_v0_net(net, v0_origin, log)
        origin = []  # UpgradeV0Net keeps no `layer` entries
        if ok:
            log.append("Successfully upgraded file specified using deprecated V0LayerParameter")
        else:
            log.append("Warning: had one or more problems upgrading V0NetParameter to "
                       "NetParameter (see above); continuing anyway.")
        log.append("Note that future Caffe releases will not support V0NetParameter; use "
                   "./build/tools/upgrade_net_proto_text for prototxt and "
                   "./build/tools/upgrade_net_proto_binary for model weights upgrade this and "
                   "any other net protos to the new format.")
    if _needs_data(net):
        log.append("Attempting to upgrade input file specified using deprecated "
                   f"transformation parameters: {source}")
        _upgrade_data_transformation(net)
        log.append("Successfully upgraded file specified using deprecated data "
                   "transformation parameters.")
        log.append("Note that future Caffe releases will only support transform_param "
                   "messages for transformation fields.")
    if len(net.layers) > 0:
        log.append("Attempting to upgrade input file specified using deprecated "
                   f"V1LayerParameter: {source}")
        ok, origin = _upgrade_v1_net(net, v1_origin, log)
        if ok:
            log.append("Successfully upgraded file specified using deprecated V1LayerParameter")
        else:
            log.append("Warning: had one or more problems upgrading V1LayerParameter (see "
                       "above); continuing anyway.")
    if len(net.input) > 0:
        log.append("Attempting to upgrade input file specified using deprecated input "
                   f"fields: {source}")
        origin = _upgrade_input(net, origin)
        log.append("Successfully upgraded file specified using deprecated input fields.")
        log.append("Note that future Caffe releases will only support input layers and not "
                   "input fields.")
    if _needs_batch_norm(net):
        log.append("Attempting to upgrade batch norm layers using deprecated params: "
                   f"{source}")
        _upgrade_batch_norm(net)
        log.append("Successfully upgraded batch norm layers using deprecated params.")
    return log, origin


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def upgrade_net(net: caffe_pb2.NetParameter, source: str = "<net>", *,
                inplace: bool = False) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Apply Caffe's ``UpgradeNetAsNeeded`` to a text or binary ``NetParameter``.

    Returns ``(upgraded net, log lines)``; ``source`` is the file name the log lines
    mention. The input message is left untouched unless ``inplace`` (a copy of a net
    carrying blob data costs its size in memory: use :func:`upgrade_caffemodel` for
    weights read with :func:`netspec.formats.binary.read_caffemodel`). An up-to-date net comes
    back equal, with no log lines. Raises PrototxtError where Caffe aborts.
    """
    if not inplace:
        copy = type(net)()
        copy.CopyFrom(net)
        net = copy
    log, _ = _upgrade(net, source)
    return net, log


def upgrade_caffemodel(model: CaffeModel, source: str | None = None
                       ) -> tuple[CaffeModel, list[str]]:
    """Upgrade a :class:`~netspec.formats.binary.CaffeModel` (what Caffe does to every binary net it
    reads): the net as :func:`upgrade_net`, the arrays carried along to the upgraded
    layers (legacy 4-D blob dims kept, as ``upgrade_net_proto_binary`` keeps them).
    The given model is not modified; arrays are shared, not copied."""
    net = type(model.net)()
    net.CopyFrom(model.net)
    split = [len(l.blobs) for l in model.net.layers]
    log, origin = _upgrade(net, source if source is not None else model.source, split)
    blobs = []
    for i, o in enumerate(origin):
        if o is None:
            arrays = []
        else:
            kind, index, part = o
            arrays = list((model.blobs if kind == "layer" else model.v1_blobs)[index][part])
        if len(arrays) != len(net.layer[i].blobs):  # guards the origin bookkeeping
            raise PrototxtError(f"{model.source}: layer '{net.layer[i].name}': "
                                f"{len(net.layer[i].blobs)} blobs after the upgrade but "
                                f"{len(arrays)} arrays")
        blobs.append(arrays)
    # Every upgrade path ends with `layers` converted into `layer`.
    return CaffeModel(net=net, blobs=blobs, v1_blobs=[], source=model.source), log


def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str = "<solver>", *,
                   inplace: bool = False) -> tuple[caffe_pb2.SolverParameter, list[str]]:
    """Caffe's ``UpgradeSolverAsNeeded``: ``solver_type`` (enum) -> ``type`` (string).

    Raises PrototxtError when both are given (Caffe's CHECK)."""
    if not inplace:
        copy = type(solver)()
        copy.CopyFrom(solver)
        solver = copy
    log: list[str] = []
    if not solver_needs_upgrade(solver):
        return solver, log
    log.append("Attempting to upgrade input file specified using deprecated 'solver_type' "
               f"field (enum)': {source}")
    if solver.HasField("type"):
        raise PrototxtError(f"{source}: Failed to upgrade solver: old solver_type field (enum) "
                            "and new type field (string) cannot be both specified in solver "
                            "proto text.")
    enum_name = _enum_name(solver, "SolverType", solver.solver_type)
    solver.type = _SOLVER_TYPE_NAMES[enum_name]
    solver.ClearField("solver_type")
    log.append("Successfully upgraded file specified using deprecated 'solver_type' field "
               "(enum) to 'type' field (string).")
    log.append("Note that future Caffe releases will only support 'type' field (string) for "
               "a solver's type.")
    return solver, log


def weight_layers(model: CaffeModel):
    """``(name, type, [(array, legacy), ...])`` per layer of the *upgraded* net of a caffemodel, in order, as
    Caffe's ``CopyTrainedLayersFrom`` sees it (V0/V1 files upgraded first). ``legacy`` is True for a blob stored
    with num/channels/height/width: Caffe then compares shapes right-aligned in 4-D (``Blob::ShapeEquals``)."""
    if needs_upgrade(model.net):
        model, messages = upgrade_caffemodel(model)
        for message in messages:
            log.info(message)
    for layer, arrays in zip(model.net.layer, model.blobs):
        yield layer.name, layer.type, [(a, binary.is_legacy_blob(stub)) for stub, a in zip(layer.blobs, arrays)]
