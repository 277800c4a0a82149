"""CaffeNet's activation checkpointing: same loss, gradients and BatchNorm statistics as the plain fast path,
with fewer activation bytes held for backward."""
import numpy as np
import pytest
import torch

import netspec
from netspec.registry import LAYERS

NET = """
name: "ckpt"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 40 dim: 40 } shape { dim: 2 dim: 1 dim: 40 dim: 40 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
%(stack)s
layer { name: "conv2" type: "Convolution" bottom: "c7" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool1" type: "Pooling" bottom: "conv2" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "drop3" type: "Dropout" bottom: "conv3" top: "conv3" dropout_param { dropout_ratio: 0.3 } }
layer { name: "bn3" type: "BatchNorm" bottom: "conv3" top: "bn3" }
layer { name: "scale3" type: "Scale" bottom: "bn3" top: "bn3" scale_param { bias_term: true } }
layer { name: "relu3" type: "ReLU" bottom: "bn3" top: "bn3" }
layer { name: "conv4" type: "Convolution" bottom: "bn3" top: "conv4"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "up" type: "Deconvolution" bottom: "conv4" top: "up"
        convolution_param { num_output: 8 kernel_size: 4 stride: 2 pad: 1 weight_filler { type: "bilinear" } } }
layer { name: "fuse" type: "Eltwise" bottom: "up" bottom: "conv2" top: "fuse" }
layer { name: "score" type: "Convolution" bottom: "fuse" top: "score"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""
# a deeper full-resolution stretch (as VGG's), where checkpointing pays
STACK = "\n".join(
    f'layer {{ name: "c{i}" type: "Convolution" bottom: "{"conv1" if i == 0 else f"c{i - 1}"}" top: "c{i}" '
    f'convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.2 }} }} }}\n'
    f'layer {{ name: "r{i}" type: "ReLU" bottom: "c{i}" top: "c{i}" }}' for i in range(8))
NET = NET % {"stack": STACK}


def _step(path, checkpoint):
    torch.manual_seed(0)
    net = netspec.Net(str(path), netspec.TRAIN)
    net.configure(checkpoint=checkpoint)
    rng = np.random.RandomState(0)
    net.blobs["data"].data[...] = rng.randn(2, 3, 40, 40)
    net.blobs["label"].data[...] = rng.randint(0, 4, (2, 1, 40, 40))
    saved = {}
    weights = {p.untyped_storage().data_ptr() for p in net.module.parameters()}

    def pack(t):  # activations held for backward (parameters are held either way)
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(1)  # the Dropout mask
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = net.forward_backward()
    params = {f"{name}/{i}": (b.data.copy(), b.diff.copy()) for name, blobs in net.params.items()
              for i, b in enumerate(blobs)}
    return loss, params, sum(saved.values())


def test_checkpointing_gives_the_same_loss_grads_and_statistics_with_less_saved(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    loss0, params0, saved0 = _step(path, False)
    loss1, params1, saved1 = _step(path, True)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert params0.keys() == params1.keys()
    for key in params0:
        np.testing.assert_allclose(params1[key][0], params0[key][0], rtol=1e-6, atol=1e-7, err_msg=key)
        np.testing.assert_allclose(params1[key][1], params0[key][1], rtol=1e-5, atol=1e-7, err_msg=key)
    # bn3's moving averages were updated once (batch statistics: not recomputed), and conv grads are non-zero
    assert params1["bn3/2"][0][0] == 1.0
    assert np.abs(params1["conv1/0"][1]).sum() > 0
    assert saved1 < 0.5 * saved0, (saved0, saved1)


def test_pycaffe_path_and_inference_ignore_checkpointing(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = netspec.Net(str(path), netspec.TRAIN)
    net.configure(checkpoint=True)
    net.blobs["data"].data[...] = np.random.RandomState(0).randn(2, 3, 40, 40)
    net.blobs["label"].data[...] = 1
    net.forward()   # keeps every blob, as pycaffe does
    assert net.blobs["conv3"].data.any() and net.blobs["fuse"].data.shape == (2, 8, 40, 40)


def test_checkpointable_types_are_declared_pure_in_the_registry():
    pure = {t for t in LAYERS if LAYERS.get(t).pure}
    assert {"Convolution", "ReLU", "Pooling", "BatchNorm", "Crop", "Interp"} <= pure
    assert not pure & {"Data", "Python", "SoftmaxWithLoss", "Accuracy"}


def test_more_param_specs_than_blobs_and_input_dim_with_input_shape_are_refused_as_caffe_does():
    from google.protobuf import text_format
    from netspec.errors import LayerError, PrototxtError
    from netspec.proto import caffe_pb2
    net = text_format.Parse(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 } param { lr_mult: 2 } '
        'param { lr_mult: 3 } inner_product_param { num_output: 2 } }', caffe_pb2.NetParameter())
    with pytest.raises(LayerError, match=r"layer 'ip' \(InnerProduct\): Too many params specified for layer: 3 "
                                         r"param \{ \} blocks, but the layer has 2 parameter blobs"):
        netspec.Net(net, netspec.TEST)
    both = text_format.Parse('input: "x" input_shape { dim: 1 dim: 2 } input_dim: 1 input_dim: 2 input_dim: 1 '
                             'input_dim: 1', caffe_pb2.NetParameter())
    with pytest.raises(PrototxtError, match="either input_shape OR deprecated input_dim, not both"):
        netspec.Net(both, netspec.TEST)
