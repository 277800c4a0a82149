"""Caffemodels as PSPNet's and SegNet's forks write them (their own field numbers: PSPNet's bn_param at 152 with
slope_filler = 1 ..., SegNet's upsample_param at 137 and dense_image_data_param at 138, which are BVLC's
embed_param and tile_param in netspec's schema) load into netspec name for name: the blobs arrive, the fork's
recorded parameters are ignored (the prototxt gives them)."""

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2, compile_proto

pytest.importorskip("grpc_tools")

# The messages these tests write, at the forks' own field numbers (facts from hszhao/PSPNet's and
# alexgkendall/caffe-segnet's src/caffe/proto/caffe.proto), written here: just enough of each fork's schema.
_COMMON = """
syntax = "proto2";
package caffe;
message BlobShape { repeated int64 dim = 1 [packed = true]; }
message BlobProto { optional BlobShape shape = 7; repeated float data = 5 [packed = true]; }
message FillerParameter { optional string type = 1 [default = "constant"]; optional float value = 2; }
message ConvolutionParameter { optional uint32 num_output = 1; optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3; repeated uint32 kernel_size = 4; }
message NetParameter { optional string name = 1; repeated string input = 3; repeated int32 input_dim = 4;
  repeated LayerParameter layer = 100; }
"""
PSPNET_SCHEMA = _COMMON + """
message BNParameter { optional FillerParameter slope_filler = 1; optional FillerParameter bias_filler = 2;
  optional float momentum = 3 [default = 0.9]; optional float eps = 4 [default = 1e-5];
  optional bool frozen = 5 [default = false]; }
message InterpParameter { optional int32 height = 1; optional int32 width = 2; optional int32 zoom_factor = 3;
  optional int32 shrink_factor = 4; optional int32 pad_beg = 5; optional int32 pad_end = 6; }
message LayerParameter { optional string name = 1; optional string type = 2; repeated string bottom = 3;
  repeated string top = 4; repeated BlobProto blobs = 7; optional ConvolutionParameter convolution_param = 106;
  optional InterpParameter interp_param = 143; optional BNParameter bn_param = 152; }
"""
SEGNET_SCHEMA = _COMMON + """
message BNParameter { enum BNMode { LEARN = 0; INFERENCE = 1; } optional BNMode bn_mode = 3 [default = LEARN];
  optional FillerParameter scale_filler = 1; optional FillerParameter shift_filler = 2; }
message PoolingParameter { enum PoolMethod { MAX = 0; AVE = 1; STOCHASTIC = 2; }
  optional PoolMethod pool = 1 [default = MAX]; optional uint32 kernel_size = 2; optional uint32 stride = 3; }
message UpsampleParameter { optional uint32 scale = 1 [default = 2]; optional uint32 scale_h = 2;
  optional uint32 scale_w = 3; optional bool pad_out_h = 4; optional bool pad_out_w = 5;
  optional uint32 upsample_h = 6; optional uint32 upsample_w = 7; }
message DenseImageDataParameter { optional string source = 1; optional uint32 batch_size = 2;
  optional bool shuffle = 4 [default = false]; }
message LayerParameter { optional string name = 1; optional string type = 2; repeated string bottom = 3;
  repeated string top = 4; repeated BlobProto blobs = 7; optional BNParameter bn_param = 45;
  optional ConvolutionParameter convolution_param = 106; optional PoolingParameter pooling_param = 121;
  optional UpsampleParameter upsample_param = 137; optional DenseImageDataParameter dense_image_data_param = 138; }
"""

PSP = ('input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9\n'  # the forks have no Input layer
       'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 '
       'kernel_size: 3 pad: 1 bias_term: false } }\n'
       'layer { name: "conv/bn" type: "BN" bottom: "conv" top: "conv" bn_param { slope_filler { type: "constant" '
       'value: 1 } bias_filler { type: "constant" value: 0 } frozen: true momentum: 0.95 } }\n'
       'layer { name: "up" type: "Interp" bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }\n')
SEG = ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
       'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 '
       'kernel_size: 3 pad: 1 } }\n'
       'layer { name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1" bn_param { bn_mode: INFERENCE '
       'scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } } }\n'
       'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask" pooling_param { '
       'pool: MAX kernel_size: 2 stride: 2 } }\n'
       'layer { name: "upsample1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up" '
       'upsample_param { scale: 2 pad_out_h: false upsample_h: 8 upsample_w: 8 } }\n')


def fork_caffemodel(schema, text, net, path, extra_layers=""):
    """``net``'s weights written with the fork's field numbers: each layer of ``text`` (plus ``extra_layers``,
    fork text) parsed by the fork-numbered NetParameter, with the blobs netspec holds."""
    proto = path.parent / f"fork_{abs(hash(schema))}" / "caffe.proto"
    proto.parent.mkdir(exist_ok=True)
    proto.write_text(schema)
    fork = compile_proto(proto)
    msg = text_format.Parse(text, fork.NetParameter())
    if extra_layers:
        extra = text_format.Parse(extra_layers, fork.NetParameter())
        layers = list(extra.layer) + list(msg.layer)
        del msg.layer[:]
        msg.layer.extend(layers)
    for lp in msg.layer:
        for b in net.params.get(lp.name, []):
            blob = lp.blobs.add()
            blob.shape.dim.extend(b.data.shape)
            blob.data.extend(b.data.ravel().tolist())
    path.write_bytes(msg.SerializeToString())
    return msg


def randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.uniform(0.5, 1.5, b.shape)


def test_pspnet_caffemodel_loads(tmp_path):
    param = text_format.Parse(PSP, caffe_pb2.NetParameter())
    torch.manual_seed(0)
    src = Net(param, netspec.TEST)
    randomize(src)
    msg = fork_caffemodel(PSPNET_SCHEMA, PSP, src, tmp_path / "psp.caffemodel")
    raw = msg.layer[1].SerializeToString()
    assert raw.find(b"\xc2\x09") >= 0  # field 152, wire type 2: PSPNet's bn_param, unknown to netspec's schema
    net = Net(param, netspec.TEST, weights=str(tmp_path / "psp.caffemodel"))
    for name in ("conv", "conv/bn"):
        for a, b in zip(net.params[name], src.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    x = np.random.default_rng(1).standard_normal((1, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(data=x)["up"], src.forward(data=x)["up"])


def test_segnet_caffemodel_with_clashing_numbers_loads(tmp_path):
    param = text_format.Parse(SEG, caffe_pb2.NetParameter())
    torch.manual_seed(0)
    src = Net(param, netspec.TEST)
    randomize(src)
    # the fork writes its data layer too: dense_image_data_param at 138 (BVLC's tile_param)
    data = ('layer { name: "data" type: "DenseImageData" top: "d" top: "l" dense_image_data_param { '
            'source: "/SegNet/CamVid/train.txt" batch_size: 4 shuffle: true } }\n')
    fork_caffemodel(SEGNET_SCHEMA, SEG, src, tmp_path / "seg.caffemodel", data)
    net = Net(param, netspec.TEST, weights=str(tmp_path / "seg.caffemodel"))
    for name in ("conv1", "conv1_bn"):
        for a, b in zip(net.params[name], src.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(data=x)["up"], src.forward(data=x)["up"])
