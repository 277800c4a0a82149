"""netspec.net.fold: Convolution -> BatchNorm -> Scale/Bias chains run as one convolution in forward_only, with the
outputs of the unfolded layers (to float32 rounding)."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.proto import caffe_pb2

NET = """
name: "res"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 4 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sc2" type: "Scale" bottom: "c2" top: "c2" }
layer { name: "b2" type: "Bias" bottom: "c2" top: "c2" }
layer { name: "c3" type: "Convolution" bottom: "c1" top: "c3"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn3" type: "BatchNorm" bottom: "c3" top: "n3" batch_norm_param { use_global_stats: true } }
layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "n3" bottom: "c3" top: "out" }
"""


def _net(seed=0):
    torch.manual_seed(seed)
    net = netspec.Net(text_format.Parse(NET, caffe_pb2.NetParameter()), netspec.TEST)
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.uniform(0.5, 1.5, b.data.shape)   # positive variances and scale factors
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    return net


def test_folded_chains_give_the_unfolded_outputs():
    net = _net()
    want = net.forward_only(fold=False)["out"].copy()
    got = net.forward_only()["out"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    heads, absorbed = net.module._fold_plan()
    names = {n.index: n.name for n in net.module.nodes}
    # conv->BN->Scale and conv->Scale->Bias in place are folded; a BatchNorm writing another blob is not
    assert sorted(names[i] for i in heads) == ["c1", "c2"]
    assert sorted(names[i] for i in absorbed) == ["b2", "bn1", "sc1", "sc2"]


def test_changed_weights_are_refolded_and_pycaffe_forward_is_unfolded():
    net = _net()
    net.forward_only()
    net.params["bn1"][0].data[...] *= 2      # new statistics: the cached folded weights must not be reused
    net.params["sc2"][0].data[...] = -1
    want = net.forward_only(fold=False)["out"].copy()
    assert np.abs(net.forward_only()["out"] - want).max() <= 1e-5 * np.abs(want).max()
    net.forward()                             # pycaffe's forward keeps every blob: nothing folded
    bn_in = net.blobs["c1"].data
    assert np.all(bn_in >= 0)                 # the ReLU's output, after the unfolded chain


def test_batch_statistics_are_not_folded():
    net = netspec.Net(text_format.Parse(NET.replace("use_global_stats: true", "use_global_stats: false"),
                                        caffe_pb2.NetParameter()), netspec.TRAIN)
    heads, absorbed = net.module._fold_plan()
    assert [n.name for n in net.module.nodes if n.index in heads] == ["c2"]   # only the Scale -> Bias chain


FORK_BN = """
name: "forks"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn1" type: "BN" bottom: "c1" top: "c1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 1 } bn_param { frozen: true } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn2" type: "BN" bottom: "c2" top: "c2" bn_param { bn_mode: INFERENCE } }
"""


def test_the_forks_bn_folds_and_pspnet_frozen_blobs_never_train():
    torch.manual_seed(0)
    net = netspec.Net(text_format.Parse(FORK_BN, caffe_pb2.NetParameter()), netspec.TRAIN)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.uniform(0.5, 1.5, b.data.shape)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    want = net.forward_only(fold=False)["c2"].copy()
    got = net.forward_only()["c2"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    heads, absorbed = net.module._fold_plan()
    assert len(heads) == 2 and len(absorbed) == 2
    # PSPNet's frozen BN: every blob at lr_mult 0 and decay_mult 0 whatever the prototxt says (its LayerSetUp)
    specs = [(lp.lr_mult, lp.decay_mult) for lp in net.module.learnable_params() if lp.layer == "bn1"]
    assert specs == [(0.0, 0.0)] * 4
