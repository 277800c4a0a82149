"""The bundled schema: generated code in sync with caffe.proto, and upstream facts spot-checked."""

import ast
import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

import netspec.proto
from netspec.proto import ProtoLoadError, caffe_pb2

PROTO_DIR = Path(__file__).resolve().parents[2] / "netspec" / "proto"
FD = descriptor_pb2.FieldDescriptorProto


def _field(message, name):
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[name]


def _field_proto(message, name):
    """The FieldDescriptorProto (it still carries the proto2 label, which protobuf 7 dropped
    from FieldDescriptor)."""
    proto = descriptor_pb2.DescriptorProto()
    getattr(caffe_pb2, message).DESCRIPTOR.CopyToProto(proto)
    return next(f for f in proto.field if f.name == name)


def test_generated_module_matches_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
                      str(PROTO_DIR / "caffe.proto")])
    assert rc == 0
    fresh = _serialized_file(tmp_path / "caffe_pb2.py")
    stale = "caffe_pb2.py is stale: run python tools/gen_proto.py"
    assert fresh == _serialized_file(PROTO_DIR / "caffe_pb2.py"), stale
    # The loaded module's descriptor is the fresh one (built in a private pool, since a second
    # caffe.proto in the default pool would clash; the runtime re-renders float defaults, so
    # compare runtime serializations with each other).
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(fresh))
    assert pool.FindFileByName("caffe.proto").serialized_pb == caffe_pb2.DESCRIPTOR.serialized_pb


def _serialized_file(module_path):
    """The serialized FileDescriptorProto a generated module embeds, read without importing it
    (importing a second caffe.proto into the default descriptor pool would clash)."""
    tree = ast.parse(Path(module_path).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile"):
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"{module_path}: no AddSerializedFile call")


# (message, field, number, label, type, default) as in BVLC Caffe master.
UPSTREAM = [
    ("BlobShape", "dim", 1, FD.LABEL_REPEATED, FD.TYPE_INT64, None),
    ("BlobProto", "shape", 7, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, None),
    ("BlobProto", "data", 5, FD.LABEL_REPEATED, FD.TYPE_FLOAT, None),
    ("BlobProto", "diff", 6, FD.LABEL_REPEATED, FD.TYPE_FLOAT, None),
    ("BlobProto", "double_data", 8, FD.LABEL_REPEATED, FD.TYPE_DOUBLE, None),
    ("BlobProto", "num", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 0),
    ("BlobProto", "width", 4, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 0),
    ("Datum", "data", 4, FD.LABEL_OPTIONAL, FD.TYPE_BYTES, b""),
    ("Datum", "encoded", 7, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, False),
    ("FillerParameter", "type", 1, FD.LABEL_OPTIONAL, FD.TYPE_STRING, "constant"),
    ("FillerParameter", "max", 4, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 1.0),
    ("FillerParameter", "std", 6, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 1.0),
    ("FillerParameter", "sparse", 7, FD.LABEL_OPTIONAL, FD.TYPE_INT32, -1),
    ("NetParameter", "layer", 100, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("NetParameter", "layers", 2, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("NetParameter", "input_dim", 4, FD.LABEL_REPEATED, FD.TYPE_INT32, None),
    ("NetParameter", "input_shape", 8, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("NetParameter", "force_backward", 5, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, False),
    ("SolverParameter", "net", 24, FD.LABEL_OPTIONAL, FD.TYPE_STRING, ""),
    ("SolverParameter", "test_iter", 3, FD.LABEL_REPEATED, FD.TYPE_INT32, None),
    ("SolverParameter", "test_initialization", 32, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, True),
    ("SolverParameter", "average_loss", 33, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 1),
    ("SolverParameter", "iter_size", 36, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 1),
    ("SolverParameter", "regularization_type", 29, FD.LABEL_OPTIONAL, FD.TYPE_STRING, "L2"),
    ("SolverParameter", "clip_gradients", 35, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, -1.0),
    ("SolverParameter", "snapshot_after_train", 28, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, True),
    ("SolverParameter", "random_seed", 20, FD.LABEL_OPTIONAL, FD.TYPE_INT64, -1),
    ("SolverParameter", "type", 40, FD.LABEL_OPTIONAL, FD.TYPE_STRING, "SGD"),
    ("SolverParameter", "momentum2", 39, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, pytest.approx(0.999)),
    ("SolverParameter", "layer_wise_reduce", 41, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, True),
    ("SolverParameter", "weights", 42, FD.LABEL_REPEATED, FD.TYPE_STRING, None),
    ("SolverState", "history", 3, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("SolverState", "current_step", 4, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 0),
    ("NetState", "level", 2, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 0),
    ("ParamSpec", "lr_mult", 3, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 1.0),
    ("ParamSpec", "decay_mult", 4, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 1.0),
    ("LayerParameter", "blobs", 7, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("LayerParameter", "phase", 10, FD.LABEL_OPTIONAL, FD.TYPE_ENUM, 0),
    ("LayerParameter", "propagate_down", 11, FD.LABEL_REPEATED, FD.TYPE_BOOL, None),
    ("TransformationParameter", "mean_value", 5, FD.LABEL_REPEATED, FD.TYPE_FLOAT, None),
    ("LossParameter", "ignore_label", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 0),
    ("LossParameter", "normalize", 2, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, False),
    ("ConvolutionParameter", "bias_term", 2, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, True),
    ("ConvolutionParameter", "kernel_size", 4, FD.LABEL_REPEATED, FD.TYPE_UINT32, None),
    ("ConvolutionParameter", "stride", 6, FD.LABEL_REPEATED, FD.TYPE_UINT32, None),
    ("ConvolutionParameter", "dilation", 18, FD.LABEL_REPEATED, FD.TYPE_UINT32, None),
    ("ConvolutionParameter", "group", 5, FD.LABEL_OPTIONAL, FD.TYPE_UINT32, 1),
    ("ConvolutionParameter", "axis", 16, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 1),
    ("CropParameter", "axis", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT32, 2),
    ("CropParameter", "offset", 2, FD.LABEL_REPEATED, FD.TYPE_UINT32, None),
    ("PoolingParameter", "stride", 3, FD.LABEL_OPTIONAL, FD.TYPE_UINT32, 1),
    ("PoolingParameter", "global_pooling", 12, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, False),
    ("DropoutParameter", "dropout_ratio", 1, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 0.5),
    ("LRNParameter", "beta", 3, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, 0.75),
    ("BatchNormParameter", "eps", 3, FD.LABEL_OPTIONAL, FD.TYPE_FLOAT, pytest.approx(1e-5)),
    ("ScaleParameter", "bias_term", 4, FD.LABEL_OPTIONAL, FD.TYPE_BOOL, False),
    ("ReshapeParameter", "num_axes", 3, FD.LABEL_OPTIONAL, FD.TYPE_INT32, -1),
    ("DataParameter", "prefetch", 10, FD.LABEL_OPTIONAL, FD.TYPE_UINT32, 4),
    ("ImageDataParameter", "batch_size", 4, FD.LABEL_OPTIONAL, FD.TYPE_UINT32, 1),
    ("WindowDataParameter", "crop_mode", 11, FD.LABEL_OPTIONAL, FD.TYPE_STRING, "warp"),
    ("PythonParameter", "param_str", 3, FD.LABEL_OPTIONAL, FD.TYPE_STRING, ""),
    ("ClipParameter", "min", 1, FD.LABEL_REQUIRED, FD.TYPE_FLOAT, 0.0),
    ("ClipParameter", "max", 2, FD.LABEL_REQUIRED, FD.TYPE_FLOAT, 0.0),
    ("V1LayerParameter", "type", 5, FD.LABEL_OPTIONAL, FD.TYPE_ENUM, 0),
    ("V1LayerParameter", "blobs", 6, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, None),
    ("V1LayerParameter", "blobs_lr", 7, FD.LABEL_REPEATED, FD.TYPE_FLOAT, None),
    ("V1LayerParameter", "param", 1001, FD.LABEL_REPEATED, FD.TYPE_STRING, None),
    ("V1LayerParameter", "blob_share_mode", 1002, FD.LABEL_REPEATED, FD.TYPE_ENUM, None),
    ("V1LayerParameter", "loss_param", 42, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, None),
    ("V1LayerParameter", "layer", 1, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, None),
    ("V0LayerParameter", "kernelsize", 8, FD.LABEL_OPTIONAL, FD.TYPE_UINT32, 0),
    ("V0LayerParameter", "det_crop_mode", 59, FD.LABEL_OPTIONAL, FD.TYPE_STRING, "warp"),
    ("V0LayerParameter", "hdf5_output_param", 1001, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, None),
]


@pytest.mark.parametrize("message,name,number,label,ftype,default", UPSTREAM,
                         ids=[f"{m}.{n}" for m, n, *_ in UPSTREAM])
def test_upstream_field(message, name, number, label, ftype, default):
    field = _field(message, name)
    spec = _field_proto(message, name)
    assert field.number == spec.number == number
    assert spec.label == label
    assert field.type == spec.type == ftype
    if default is not None:
        assert field.default_value == default


# LayerParameter's *_param fields and their upstream numbers (BVLC master).
LAYER_PARAMS = {
    "transform_param": 100, "loss_param": 101, "accuracy_param": 102, "argmax_param": 103,
    "batch_norm_param": 139, "bias_param": 141, "clip_param": 148, "concat_param": 104,
    "contrastive_loss_param": 105, "convolution_param": 106, "crop_param": 144,
    "data_param": 107, "dropout_param": 108, "dummy_data_param": 109, "eltwise_param": 110,
    "elu_param": 140, "embed_param": 137, "exp_param": 111, "flatten_param": 135,
    "hdf5_data_param": 112, "hdf5_output_param": 113, "hinge_loss_param": 114,
    "image_data_param": 115, "infogain_loss_param": 116, "inner_product_param": 117,
    "input_param": 143, "log_param": 134, "lrn_param": 118, "memory_data_param": 119,
    "mvn_param": 120, "parameter_param": 145, "pooling_param": 121, "power_param": 122,
    "prelu_param": 131, "python_param": 130, "recurrent_param": 146, "reduction_param": 136,
    "relu_param": 123, "reshape_param": 133, "scale_param": 142, "sigmoid_param": 124,
    "softmax_param": 125, "spp_param": 132, "slice_param": 126, "swish_param": 147,
    "tanh_param": 127, "threshold_param": 128, "tile_param": 138, "window_data_param": 129,
}
EXTENSIONS = {"interp_param": 2143,
              # SSD (weiliu89/caffe ssd): the fork's own numbers, unused by BVLC
              "permute_param": 202, "prior_box_param": 203, "detection_output_param": 204, "norm_param": 206,
              # DeepLab v1/v2 (its 144 and 145 are upstream's crop_param and parameter_param)
              "seg_accuracy_param": 2150, "mat_write_param": 2151,
              # SegNet / ENet (bn_param 45 and dense_image_data_param 46: their numbers; PSPNet's BN shares
              # bn_param; upsample_param: SegNet's 137 and ENet's 147 are upstream's)
              "bn_param": 45, "dense_image_data_param": 46, "upsample_param": 2160,
              # Faster R-CNN (caffe-fast-rcnn's own numbers), ShuffleNet's (164); OpenCV's proposal_param is 201,
              # SSD's multibox_loss_param, so 2191 here
              "roi_pooling_param": 8266711, "smooth_l1_loss_param": 8266712, "shuffle_channel_param": 164,
              "proposal_param": 2191,
              # SSD's training layers, at the fork's own numbers
              "annotated_data_param": 200, "multibox_loss_param": 201, "detection_evaluate_param": 205}
# LayerParameter's other upstream fields (name, type, bottom, top, loss_weight, param, blobs, include, exclude,
# phase, propagate_down)
UPSTREAM_OTHER = set(range(1, 12))


def test_layer_param_numbers():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    params = {name: f.number for name, f in fields.items() if name.endswith("_param")}
    assert params == {**LAYER_PARAMS, **EXTENSIONS}
    # No extension takes a number upstream uses (or its next available ID, 149); a fork's own number is
    # kept where it is free, so the fork's binary files decode (docs/schema_extensions.md).
    upstream = set(LAYER_PARAMS.values()) | UPSTREAM_OTHER | {149}
    assert not upstream & set(EXTENSIONS.values())


def test_packed_repeated_numbers():
    for message, name in [("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"),
                          ("BlobProto", "double_data"), ("BlobProto", "double_diff")]:
        assert _field(message, name).GetOptions().packed, f"{message}.{name}"
    # Everything else repeated is unpacked in proto2 (as upstream).
    assert not _field("ConvolutionParameter", "pad").GetOptions().packed
    assert not _field("Datum", "float_data").GetOptions().packed


def test_packed_wire_format():
    blob = caffe_pb2.BlobProto(data=[1.0, 2.0])
    # field 5, wire type 2 (length-delimited), 8 bytes of floats
    assert blob.SerializeToString()[:2] == b"\x2a\x08"


def test_enums_and_defaults():
    pb = caffe_pb2
    assert pb.PoolingParameter().pool == pb.PoolingParameter.MAX
    assert pb.LossParameter().normalization == pb.LossParameter.VALID
    assert pb.EltwiseParameter().operation == pb.EltwiseParameter.SUM
    assert pb.SolverParameter().solver_mode == pb.SolverParameter.GPU
    assert pb.SolverParameter().snapshot_format == pb.SolverParameter.BINARYPROTO
    assert pb.SolverParameter().solver_type == pb.SolverParameter.SGD
    assert pb.NetState().phase == pb.TEST
    assert (pb.TRAIN, pb.TEST) == (0, 1)
    assert pb.FillerParameter().variance_norm == pb.FillerParameter.FAN_IN
    assert pb.LRNParameter().norm_region == pb.LRNParameter.ACROSS_CHANNELS
    assert pb.HingeLossParameter().norm == pb.HingeLossParameter.L1
    assert pb.ReductionParameter().operation == pb.ReductionParameter.SUM
    assert pb.DataParameter().backend == pb.DataParameter.LEVELDB
    assert pb.ParamSpec.PERMISSIVE == 1
    assert [v.name for v in pb.LossParameter.NormalizationMode.DESCRIPTOR.values] == [
        "FULL", "VALID", "BATCH_SIZE", "NONE"]
    assert [(v.name, v.number) for v in pb.ReductionParameter.ReductionOp.DESCRIPTOR.values] == [
        ("SUM", 1), ("ASUM", 2), ("SUMSQ", 3), ("MEAN", 4)]


def test_v1_layer_type_enum_complete():
    values = {v.name: v.number for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values}
    # DeepLab v1's types (netspec extensions; its IMAGE_SEG_DATA = 39 is upstream's DECONVOLUTION)
    deeplab = {"IMAGE_SEG_DATA": 2154, "SEG_ACCURACY": 40, "INTERP": 41, "MAT_WRITE": 43}
    assert {k: values.pop(k) for k in deeplab} == deeplab
    assert len(values) == 40
    assert sorted(values.values()) == list(range(40))
    assert values["CONVOLUTION"] == 4 and values["DECONVOLUTION"] == 39
    assert values["SOFTMAX_LOSS"] == 21 and values["SPLIT"] == 22 and values["ABSVAL"] == 35


def test_extensions():
    pb = caffe_pb2
    interp = pb.InterpParameter()
    assert (interp.zoom_factor, interp.shrink_factor, interp.pad_beg, interp.pad_end) == (1, 1, 0, 0)
    assert [f.number for f in pb.InterpParameter.DESCRIPTOR.fields] == [1, 2, 3, 4, 5, 6]
    assert _field("PoolingParameter", "round_mode").number == 13
    assert pb.PoolingParameter().round_mode == pb.PoolingParameter.CEIL
    assert pb.PoolingParameter.FLOOR == 1
    class_weight = _field("LossParameter", "class_weight")
    assert class_weight.number == 1001
    assert _field_proto("LossParameter", "class_weight").label == FD.LABEL_REPEATED


def test_extensions_documented():
    text = (PROTO_DIR / "caffe.proto").read_text()
    docs = (PROTO_DIR.parents[1] / "docs" / "schema_extensions.md").read_text()
    for name in ("interp_param", "round_mode", "class_weight"):
        assert name in text.split("syntax =")[0], f"{name} missing from caffe.proto's header"
        assert name in docs
    assert "next available layer-specific ID: 149" in text


# --------------------------------------------------------------------------------------------
# load_proto

FORK_PROTO = """
syntax = "proto2";
package caffe;
enum Phase { TRAIN = 0; TEST = 1; }
message NetParameter {
  optional string name = 1;
  repeated LayerParameter layer = 100;
}
message SolverParameter { optional float base_lr = 5; }
message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  optional MyNormParameter my_norm_param = 149;
}
message MyNormParameter { optional bool across_spatial = 1 [default = true]; }
"""


@pytest.fixture
def restore_schema():
    yield
    netspec.proto.reset_proto()


def test_load_proto_swaps_schema(tmp_path, restore_schema):
    pytest.importorskip("grpc_tools")
    from netspec.formats import prototxt

    path = tmp_path / "caffe.proto"
    path.write_text(FORK_PROTO)
    text = 'layer { name: "n" type: "MyNorm" my_norm_param { across_spatial: false } }'
    with pytest.raises(Exception, match="my_norm_param"):
        prototxt.parse_net(text)
    module = netspec.proto.load_proto(path)
    assert netspec.proto.pb2() is module
    net = prototxt.parse_net(text)
    assert net.layer[0].my_norm_param.across_spatial is False
    assert module.MyNormParameter().across_spatial is True
    assert module.TEST == 1
    assert prototxt.parse_net(prototxt.to_text(net)) == net
    # the bundled module stays intact and usable
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["input_param"].number == 143
    netspec.proto.reset_proto()
    assert netspec.proto.pb2() is caffe_pb2


def test_load_proto_errors(tmp_path, restore_schema):
    pytest.importorskip("grpc_tools")
    with pytest.raises(ProtoLoadError, match="no such file"):
        netspec.proto.load_proto(tmp_path / "missing.proto")
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto2"; package caffe; message X { optional nope y = 1; }')
    with pytest.raises(ProtoLoadError, match="protoc"):
        netspec.proto.load_proto(bad)
    other = tmp_path / "other.proto"
    other.write_text('syntax = "proto2"; package notcaffe; message X { optional int32 y = 1; }')
    with pytest.raises(ProtoLoadError, match="package"):
        netspec.proto.load_proto(other)
    assert netspec.proto.pb2() is caffe_pb2


def test_load_proto_without_grpc_tools(tmp_path, monkeypatch, restore_schema):
    path = tmp_path / "caffe.proto"
    path.write_text(FORK_PROTO)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "grpc_tools" else real_find_spec(name, *a))
    with pytest.raises(ProtoLoadError, match="pip install grpcio-tools"):
        netspec.proto.load_proto(path)
