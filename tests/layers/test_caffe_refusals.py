"""Nets that Caffe refuses and netspec refuses the same way, naming the layer and what to change:
Embed back-propagating into its index input (embed_layer.cpp Backward_cpu CHECK), InfogainLoss back-propagating
into the infogain matrix (infogain_loss_layer.cpp Backward_cpu LOG(FATAL)), and a loss_weight count that
differs from the top count (layer.hpp SetLossWeights CHECK_EQ)."""
import numpy as np
import pytest
from google.protobuf import text_format

import netspec
from netspec.errors import LayerError
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2

EMBED = """{head}
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 3 }} }} }}
layer {{ name: "e" type: "Embed" bottom: "x" top: "y" {prop}
        embed_param {{ num_output: 4 input_dim: 5 weight_filler {{ type: "gaussian" }} }} }}
"""

INFOGAIN = """{head}
layer {{ name: "in" type: "Input" top: "x" top: "label" top: "H"
        input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 }} shape {{ dim: 1 dim: 1 dim: 3 dim: 3 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "s" inner_product_param {{ num_output: 3
        weight_filler {{ type: "gaussian" }} }} }}
layer {{ name: "l" type: "InfogainLoss" bottom: "s" bottom: "label" bottom: "H" top: "loss" {prop} }}
"""


def net(text, phase=netspec.TRAIN):
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def run(n, **feed):
    n.forward(**feed)
    for o in n.outputs:
        if not any(o == t for t, _ in n.loss_outputs()):
            n.blobs[o].diff[...] = 1
    n.backward()


def test_embed_backward_into_the_index_input_with_force_backward():
    n = net(EMBED.format(head="force_backward: true", prop=""))
    out = n.forward(x=np.array([0, 4, 2], np.float32))
    assert out["y"].shape == (3, 4)  # forward runs, as in Caffe
    with pytest.raises(LayerError, match=r"layer 'e' \(Embed\): Caffe's Embed cannot back-propagate to its "
                                         r"index input.*Can't backpropagate to EmbedLayer input.*force_backward"):
        run(n, x=np.array([0, 4, 2], np.float32))


def test_embed_propagate_down_true_on_the_index_input():
    with pytest.raises(LayerError, match=r"layer 'e' \(Embed\): .*index input.*propagate_down: false"):
        net(EMBED.format(head="", prop="propagate_down: true"))


@pytest.mark.parametrize("prop", ["", "propagate_down: false"])
def test_embed_without_backward_into_the_index(prop):
    n = net(EMBED.format(head="", prop=prop))
    run(n, x=np.array([0, 4, 4], np.float32))
    w = n.params["e"][0].diff
    assert w[4].tolist() == [2, 2, 2, 2] and w[0].tolist() == [1, 1, 1, 1] and not w[1:4].any()


def feed():
    return dict(x=np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
                label=np.array([0, 2], np.float32), H=np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3))


def test_infogain_backward_into_h_with_force_backward():
    n = net(INFOGAIN.format(head="force_backward: true", prop=""))
    with pytest.raises(LayerError, match=r"layer 'l' \(InfogainLoss\): Caffe's InfogainLoss cannot back-propagate "
                                         r"to the infogain matrix H.*force_backward"):
        run(n, **feed())


def test_infogain_propagate_down_true_on_h():
    with pytest.raises(LayerError, match=r"layer 'l' \(InfogainLoss\): .*infogain matrix H.*propagate_down: false "
                                         r"for bottom 'H'"):
        net(INFOGAIN.format(head="", prop="propagate_down: true propagate_down: false propagate_down: true"))


def test_infogain_trains_without_backward_into_h():
    n = net(INFOGAIN.format(head="", prop=""))
    run(n, **feed())
    assert np.any(n.params["ip"][0].diff)


@pytest.mark.parametrize("weights,ok", [
    ("loss_weight: 1", False),               # one weight for two tops
    ("", False),                              # LossLayer adds loss_weight 1 for top 0: still one for two tops
    ("loss_weight: 1 loss_weight: 0", True),  # once per top
])
def test_loss_weight_once_per_top(weights, ok):
    text = f"""layer {{ name: "in" type: "Input" top: "x" top: "label" input_param {{ shape {{ dim: 2 dim: 3 }}
                shape {{ dim: 2 }} }} }}
layer {{ name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" {weights} }}
"""
    if ok:
        out = net(text).forward(x=np.zeros((2, 3), np.float32), label=np.zeros(2, np.float32))
        assert out["prob"].shape == (2, 3)
        return
    with pytest.raises(LayerError, match=r"layer 'l' \(SoftmaxWithLoss\): loss_weight must be unspecified or given "
                                         r"once per top blob \(2 tops, 1 loss weights\)"):
        net(text)
