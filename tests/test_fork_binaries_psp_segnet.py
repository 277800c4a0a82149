"""Caffemodels as PSPNet's and SegNet's forks write them (their own caffe.proto: PSPNet's bn_param at 152 with
slope_filler = 1 ..., SegNet's upsample_param at 137 and dense_image_data_param at 138, which are BVLC's
embed_param and tile_param in netspec's schema) load into netspec name for name: the blobs arrive, the fork's
recorded parameters are ignored (the prototxt gives them)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.net import Net
from netspec.proto import caffe_pb2, compile_proto

FORKS = Path(__file__).parent / "data" / "forks"
pytest.importorskip("grpc_tools")

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


def fork_caffemodel(fork_proto, text, net, path, extra_layers=""):
    """``net``'s weights written with the fork's schema: each layer of ``text`` (plus ``extra_layers``, fork
    text) parsed by the fork's own NetParameter, with the blobs netspec holds."""
    fork = compile_proto(FORKS / fork_proto)
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
    msg = fork_caffemodel("pspnet/pspnet_caffe.proto", PSP, src, tmp_path / "psp.caffemodel")
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
    fork_caffemodel("segnet/segnet_caffe.proto", SEG, src, tmp_path / "seg.caffemodel", data)
    net = Net(param, netspec.TEST, weights=str(tmp_path / "seg.caffemodel"))
    for name in ("conv1", "conv1_bn"):
        for a, b in zip(net.params[name], src.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(data=x)["up"], src.forward(data=x)["up"])
