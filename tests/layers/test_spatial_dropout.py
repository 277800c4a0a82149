"""ENet's spatial_dropout.SpatialDropoutLayer (built in): whole channel planes dropped in its TRAIN phase,
y = x / (1 - p) otherwise, as caffe-enet python/spatial_dropout.py."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.errors import NetspecError
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2


def net(param_str, phase=netspec.TEST):
    text = ('force_backward: true\n'
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 8 dim: 4 dim: 5 } } }\n'
            'layer { name: "drop" type: "Python" bottom: "x" top: "y" python_param { module: "spatial_dropout" '
            f'layer: "SpatialDropoutLayer" param_str: "{param_str}" }} }}\n')
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


X = np.random.default_rng(0).standard_normal((3, 8, 4, 5)).astype(np.float32) + 3


def test_test_phase_scales_by_one_over_keep():
    n = net("{\\'phase\\': \\'TEST\\', \\'p\\': \\'0.01\\'}", netspec.TRAIN)  # param_str's phase, not the net's
    n.blobs["x"].data[...] = X
    n.forward()
    np.testing.assert_allclose(n.blobs["y"].data, X * np.float32(1 / 0.99), rtol=1e-6)
    n.blobs["y"].diff[...] = 1
    n.backward()
    np.testing.assert_allclose(n.blobs["x"].diff, np.float32(1 / 0.99), rtol=1e-6)


def test_train_phase_drops_whole_planes():
    torch.manual_seed(0)
    n = net("{'phase': 'TRAIN', 'p': 0.5}")
    n.blobs["x"].data[...] = X
    n.forward()
    y = n.blobs["y"].data
    kept = np.all(y == X * 2, axis=(2, 3))
    dropped = np.all(y == 0, axis=(2, 3))
    assert np.all(kept | dropped) and kept.any() and dropped.any()
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    n.blobs["y"].diff[...] = g
    n.backward()
    np.testing.assert_array_equal(n.blobs["x"].diff, np.where(kept[:, :, None, None], g * 2, 0))


def test_bad_param_str():
    with pytest.raises(NetspecError, match="between 0 and 1"):
        net("{'phase': 'TRAIN', 'p': 1}")
