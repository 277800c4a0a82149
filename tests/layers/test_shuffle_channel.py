"""ShuffleNet's ShuffleChannel against a transcription of the fork's Resize_cpu, OpenCV's dnn on a small
ReLU-free net, and the released ShuffleNet v1 (g3) and v2 deploy nets (farmingyard/ShuffleNet) in OpenCV."""
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

DATA = Path(__file__).resolve().parents[1] / "data" / "forks" / "shufflenet"


def build(group, shape):
    lp = text_format.Parse(f'name: "sc" type: "ShuffleChannel" bottom: "x" top: "y" '
                           f'shuffle_channel_param {{ group: {group} }}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(shape)], BuildContext(phase=caffe_pb2.TEST))


def resize_cpu(x, group_row, group_column):
    """shuffle_channel_layer.cpp Resize_cpu per image: output channel j*rows + i = input channel i*cols + j."""
    out = np.empty_like(x)
    for i in range(group_row):
        for j in range(group_column):
            out[:, j * group_row + i] = x[:, i * group_column + j]
    return out


@pytest.mark.parametrize("group,C", [(1, 4), (2, 6), (3, 6), (3, 12), (6, 6)])
def test_forward_and_backward_as_the_fork(group, C):
    x = torch.randn(2, C, 3, 4, requires_grad=True)
    y = build(group, x.shape)(x)
    np.testing.assert_array_equal(y.detach().numpy(), resize_cpu(x.detach().numpy(), group, C // group))
    g = torch.randn_like(y)
    y.backward(g)
    # Backward_cpu: Resize_cpu(top_diff) with group_row = C / group, group_column = group (the inverse)
    np.testing.assert_array_equal(x.grad.numpy(), resize_cpu(g.numpy(), C // group, group))


def test_group_must_divide_the_channels():
    with pytest.raises(LayerError, match="must divide"):
        build(4, (1, 6, 2, 2))
    with pytest.raises(LayerError, match="greater than 0"):
        build(0, (1, 6, 2, 2))


def opencv_outputs(proto, net, x, tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    net.save(str(tmp_path / "w.caffemodel"))
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "w.caffemodel"))
    cv.setInput(x)
    return cv.forward()


def random_weights(net, rng):
    for blobs in net.params.values():
        for b in blobs:
            if b.data.ndim > 1:
                b.data[...] = rng.standard_normal(b.shape) * (b.data[0].size ** -0.5)
            elif len(blobs) == 3:  # BatchNorm mean, variance, factor
                b.data[...] = 1.0 if b is not blobs[1] else rng.random(b.shape) + 0.5
            else:
                b.data[...] = rng.standard_normal(b.shape) * 0.1


def test_same_outputs_in_opencv(tmp_path):
    proto = tmp_path / "shuffle.prototxt"
    proto.write_text("""input: "data" input_shape { dim: 2 dim: 6 dim: 5 dim: 5 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 12 kernel_size: 1 group: 3 } }
layer { name: "sh" type: "ShuffleChannel" bottom: "c1" top: "sh" shuffle_channel_param { group: 3 } }
layer { name: "c2" type: "Convolution" bottom: "sh" top: "c2" convolution_param { num_output: 6 kernel_size: 3 group: 3 } }
""")
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    random_weights(net, rng)
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    ours = net.forward(data=x)["c2"]
    theirs = opencv_outputs(proto, net, x, tmp_path)
    assert np.linalg.norm(theirs - ours) <= 1e-5 * np.linalg.norm(ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_1x_g3_deploy.prototxt", "shufflenet_v2_1x_deploy.prototxt"])
def test_released_nets_same_outputs_in_opencv(name, tmp_path):
    """The released deploy nets as they are (1x3x224x224; ConvolutionDepthwise, Slice, ShuffleChannel); ~3 s."""
    net = Net(str(DATA / name), netspec.TEST)
    rng = np.random.default_rng(1)
    random_weights(net, rng)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    ours = net.forward(data=x)["fc1000"]
    assert ours.shape == (1, 1000, 1, 1)
    theirs = opencv_outputs(DATA / name, net, x, tmp_path)
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()
