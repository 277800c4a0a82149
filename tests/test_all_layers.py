"""Registry sweep: every registered layer type builds, runs forward and (where Caffe has one) backward on
random input. A new type without an example here fails ``test_every_type_has_an_example``."""
import numpy as np
import pytest
import torch

import netspec
from netspec.net import Net
from netspec.proto import caffe_pb2
from google.protobuf import text_format

X = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
XL = ('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 dim: 5 '
      'dim: 6 } shape { dim: 2 dim: 1 dim: 5 dim: 6 } } }\n')
V = ('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } '
     'shape { dim: 6 } } }\n')
P = 'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'


def one(t, extra="", bottom="x"):
    return X + f'layer {{ name: "l" type: "{t}" bottom: "{bottom}" top: "y" {extra} }}'


# type -> (prototxt, backward?)  backward False: Caffe has no backward for the type.
EXAMPLES = {
    "AbsVal": (one("AbsVal"), True), "BNLL": (one("BNLL"), True), "Clip": (one("Clip", "clip_param { min: -1 max: 1 }"), True),
    "ELU": (one("ELU"), True), "Exp": (one("Exp"), True), "Log": (one("Power", "power_param { shift: 10 }") .replace('top: "y"', 'top: "p"') + '\nlayer { name: "lg" type: "Log" bottom: "p" top: "y" }', True),
    "Power": (one("Power", "power_param { power: 2 }"), True), "PReLU": (one("PReLU"), True), "ReLU": (one("ReLU"), True),
    "Sigmoid": (one("Sigmoid"), True), "Swish": (one("Swish"), True), "TanH": (one("TanH"), True),
    "Threshold": (one("Threshold"), False), "Dropout": (one("Dropout"), True),
    "Convolution": (one("Convolution", "convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'xavier' } }"), True),
    "Deconvolution": (one("Deconvolution", "convolution_param { num_output: 3 kernel_size: 4 stride: 2 weight_filler { type: 'xavier' } }"), True),
    "Im2col": (one("Im2col", "convolution_param { kernel_size: 3 }"), True),
    "Pooling": (one("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"), True),
    "SPP": (one("SPP", "spp_param { pyramid_height: 2 }"), True),
    "LRN": (one("LRN", "lrn_param { local_size: 3 }"), True),
    "BatchNorm": (one("BatchNorm"), True), "MVN": (one("MVN"), True),
    "InnerProduct": (one("InnerProduct", "inner_product_param { num_output: 3 weight_filler { type: 'gaussian' } }"), True),
    "Embed": (X + 'layer { name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 input_dim: 1 weight_filler { type: "gaussian" } } }', False),
    "Interp": (one("Interp", "interp_param { zoom_factor: 2 }"), True),
    "Scale": (one("Scale", "scale_param { bias_term: true }"), True), "Bias": (one("Bias"), True),
    "Eltwise": (X + 'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { operation: PROD } }', True),
    "Reduction": (one("Reduction", "reduction_param { operation: SUMSQ axis: 1 }"), True),
    "Softmax": (one("Softmax"), True), "ArgMax": (one("ArgMax", "argmax_param { axis: 1 }"), False),
    "Concat": (X + 'layer { name: "l" type: "Concat" bottom: "x" bottom: "x" top: "y" }', True),
    "Slice": (X + 'layer { name: "l" type: "Slice" bottom: "x" top: "y" top: "z" slice_param { axis: 1 } }', True),
    "Split": (X + 'layer { name: "l" type: "Split" bottom: "x" top: "y" top: "z" }', True),
    "Crop": (X + 'layer { name: "p" type: "Pooling" bottom: "x" top: "r" pooling_param { kernel_size: 2 stride: 2 } }\n'
             'layer { name: "l" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 } }', True),
    "Flatten": (one("Flatten"), True), "Reshape": (one("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }"), True),
    "Tile": (one("Tile", "tile_param { tiles: 2 }"), True),
    "Silence": (X + 'layer { name: "t" type: "TanH" bottom: "x" top: "y" }\nlayer { name: "l" type: "Silence" bottom: "x" }', True),
    "Input": (X + 'layer { name: "t" type: "TanH" bottom: "x" top: "y" }', True),
    "Parameter": ('layer { name: "l" type: "Parameter" top: "y" parameter_param { shape { dim: 3 dim: 2 } } }', True),
    "Filter": (V.replace("shape { dim: 6 } }", "shape { dim: 6 } }") + 'layer { name: "l" type: "Filter" bottom: "x" bottom: "label" top: "y" propagate_down: true propagate_down: false }', False),
    "BatchReindex": (V + 'layer { name: "l" type: "BatchReindex" bottom: "x" bottom: "label" top: "y" propagate_down: true propagate_down: false }', False),
    "SoftmaxWithLoss": (XL + 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "y" }', True),
    "EuclideanLoss": (P.replace('top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } }', 'top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } shape { dim: 2 dim: 4 dim: 5 dim: 6 } }') + 'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }', True),
    "SigmoidCrossEntropyLoss": (P.replace('top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } }', 'top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } shape { dim: 2 dim: 4 dim: 5 dim: 6 } }') + 'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "y" top: "loss" propagate_down: true propagate_down: false }', True),
    "InfogainLoss": (V + 'layer { name: "id" type: "Input" top: "H" input_param { shape { dim: 4 dim: 4 } } }\nlayer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" propagate_down: true propagate_down: false propagate_down: false }', True),
    "HingeLoss": (V + 'layer { name: "l" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" }', True),
    "MultinomialLogisticLoss": (V + 'layer { name: "s" type: "Softmax" bottom: "x" top: "p" }\nlayer { name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }', True),
    "ContrastiveLoss": ('layer { name: "in" type: "Input" top: "a" top: "b" top: "sim" input_param { shape { dim: 6 dim: 4 dim: 1 dim: 1 } shape { dim: 6 dim: 4 dim: 1 dim: 1 } shape { dim: 6 dim: 1 dim: 1 dim: 1 } } }\n'
                        'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" propagate_down: true propagate_down: true propagate_down: false }', True),
    "Accuracy": (V + 'layer { name: "l" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }', False),
    "RNN": ('layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }\n'
            'layer { name: "l" type: "RNN" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } propagate_down: true propagate_down: false }', True),
    "LSTM": ('layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }\n'
             'layer { name: "l" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } propagate_down: true propagate_down: false }', True),
    "DummyData": ('layer { name: "l" type: "DummyData" top: "y" dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" } } }', False),
    "MemoryData": None, "Data": None, "ImageData": None, "HDF5Data": None, "HDF5Output": None, "Python": None,
}
# None: covered by their own tests (they need files or user-fed arrays): tests/layers/test_data.py, test_python.py.


def example(type_name):
    """(prototxt, backward) from the type's registry entry (``example=``, ``backward=``); None: own tests."""
    entry = netspec.LAYERS.get(type_name)
    if entry.example is not None:
        return (entry.example, entry.backward) if entry.example else None
    return EXAMPLES.get(type_name)


def test_every_type_has_an_example():
    missing = [t for t in netspec.LAYERS if netspec.LAYERS.get(t).example is None and t not in EXAMPLES]
    assert not missing, f"give these types an example= in their register() call: {missing}"


@pytest.mark.parametrize("type_name", sorted(t for t in netspec.LAYERS if example(t) is not None))
def test_builds_runs_and_backprops(type_name):
    text, backward = example(type_name)
    param = text_format.Parse("force_backward: true\n" + text, caffe_pb2.NetParameter())
    torch.manual_seed(0)
    net = Net(param, netspec.TRAIN)
    rng = np.random.default_rng(0)
    for name in net.inputs:
        shape = net.blobs[name].shape
        if name in ("label", "sim"):
            hi = net.blobs["x"].shape[1] if "x" in net.blobs and name == "label" else 2
            if type_name in ("Filter",):
                hi = 2
            if type_name == "BatchReindex":
                hi = shape[0]
            net.blobs[name].data[...] = rng.integers(0, hi, shape)
        elif name == "x" and type_name == "Embed":
            net.blobs[name].data[...] = 0
        else:
            net.blobs[name].data[...] = rng.standard_normal(shape)
    out = net.forward()
    for k, v in out.items():
        assert np.all(np.isfinite(v)), f"{type_name}: output {k} not finite"
    if backward:
        for o in net.outputs:
            if not any(o == t for t, _ in net.loss_outputs()):
                net.blobs[o].diff[...] = rng.standard_normal(net.blobs[o].shape)
        net.backward()
        for name, b in net.blobs.items():
            assert np.all(np.isfinite(b.diff)), f"{type_name}: diff of {name} not finite"
        grads = [net.blobs[i].diff for i in net.inputs] + [p.diff for ps in net.params.values() for p in ps]
        assert any(np.any(g) for g in grads), f"{type_name}: backward reached no input or param"
