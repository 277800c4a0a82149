"""Bayesian SegNet's Monte Carlo dropout: dropout_param.sample_weights_test keeps Dropout on in TEST phase
(caffe-segnet src/caffe/layers/dropout_layer.cpp: ``phase_ == TRAIN || sample_weights_test()``). As its
test_bayesian_segnet.py, the batch holds copies of one image: one forward gives N Monte Carlo samples."""
import numpy as np
import torch
from google.protobuf import text_format

import netspec
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2

N = 128
NET = (f'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: {N} dim: 3 dim: 4 dim: 4 }} }} }}\n'
       'layer { name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 %s } }\n'
       'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
       'kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n')


def samples(flag):
    torch.manual_seed(0)
    net = Net(text_format.Parse(NET % flag, caffe_pb2.NetParameter()), netspec.TEST)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    net.blobs["x"].data[...] = x
    return net.forward()["y"].copy(), net, x


def test_test_phase_samples_with_the_flag_and_the_mean_is_stable():
    exact, _, _ = samples("")
    mc, net, x = samples("sample_weights_test: true")
    np.testing.assert_array_equal(exact[0], exact[1])          # without the flag TEST dropout is the identity
    assert not np.allclose(mc[0], mc[1])                         # Monte Carlo samples differ ...
    net.blobs["x"].data[...] = x                                 # (the in-place Dropout overwrote it)
    again = net.forward()["y"]
    assert not np.allclose(mc, again)                            # ... and so do two forwards
    scale = np.abs(exact[0]).mean()                              # E[mask / (1 - p)] = 1: the mean tends to exact
    assert np.abs(mc[:N // 2].mean(0) - mc[N // 2:].mean(0)).mean() < 0.2 * scale
    assert np.abs(np.concatenate([mc, again]).mean(0) - exact[0]).mean() < 0.1 * scale
