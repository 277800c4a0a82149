"""PoolingParameter.ceil_mode (BVLC PR #3057, as DenseNet Caffe forks and OpenCV read it): false = floor
output-size rounding (netspec's round_mode FLOOR); checked by hand and in OpenCV's dnn."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(param, shape=(1, 1, 6, 6)):
    lp = text_format.Parse(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {param} }}',
                           caffe_pb2.LayerParameter())
    m = LAYERS.get("Pooling").builder(lp, [shape], BuildContext(phase=caffe_pb2.TEST))
    return m, infer_top_shapes(m, [shape])[0]


@pytest.mark.parametrize("extra,size", [
    ("", 3), ("ceil_mode: true", 3), ("ceil_mode: false", 2),
    ("ceil_mode: false round_mode: FLOOR", 2), ("ceil_mode: true round_mode: CEIL", 3),
])
def test_output_size(extra, size):
    # (6 - 3) / 2 = 1.5: ceil -> 2 + 1 = 3 windows, floor -> 1 + 1 = 2
    _, shape = build(f"pool: MAX kernel_size: 3 stride: 2 {extra}")
    assert shape == (1, 1, size, size)


def test_floor_values_by_hand():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    m, _ = build("pool: AVE kernel_size: 3 stride: 2 ceil_mode: false")
    # windows start at 0 and 2 along each axis; the mean of a 3x3 block of arange(36).reshape(6, 6)
    ref = [[(r * 6 + c) + 7 for c in (0, 2)] for r in (0, 2)]
    assert m(x)[0, 0].tolist() == ref


@pytest.mark.parametrize("param", ["ceil_mode: false round_mode: CEIL", "ceil_mode: true round_mode: FLOOR"])
def test_contradicting_fields(param):
    with pytest.raises(LayerError, match=r"layer 'p' \(Pooling\): ceil_mode: .* contradicts round_mode"):
        build(f"pool: MAX kernel_size: 3 stride: 2 {param}")


def test_same_outputs_in_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    proto = tmp_path / "pool.prototxt"
    proto.write_text("""input: "data" input_shape { dim: 2 dim: 3 dim: 11 dim: 10 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "p1" type: "Pooling" bottom: "conv" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
layer { name: "p2" type: "Pooling" bottom: "p1" top: "p2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }
""")
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape)
    net.save(str(tmp_path / "w.caffemodel"))
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    ours = net.forward(data=x)["p2"]
    assert ours.shape == (2, 4, 2, 2)  # ceil rounding would give (2, 4, 3, 3)
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "w.caffemodel"))
    cv.setInput(x)
    theirs = cv.forward("p2")
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()


@pytest.mark.slow
def test_released_densenet_121_same_outputs_in_opencv(tmp_path):
    """shicai/DenseNet-Caffe DenseNet_121.prototxt as released (pool1 has ceil_mode: false: 56x56, not 57x57),
    random weights, 1x3x224x224; ~3 s."""
    cv2 = pytest.importorskip("cv2")
    from pathlib import Path
    proto = Path(__file__).resolve().parents[1] / "data" / "forks" / "densenet" / "DenseNet_121.prototxt"
    net = Net(str(proto), netspec.TEST)
    assert net.blobs["pool1"].shape == (1, 64, 56, 56)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            if b.data.ndim > 1:
                b.data[...] = rng.standard_normal(b.shape) * (b.data[0].size ** -0.5)
            elif len(blobs) == 3:  # BatchNorm mean, variance, factor
                b.data[...] = 1.0 if b is not blobs[1] else rng.random(b.shape) + 0.5
            else:
                b.data[...] = rng.standard_normal(b.shape) * 0.1
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    ours = net.forward(data=x)["fc6"]
    net.save(str(tmp_path / "w.caffemodel"))
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "w.caffemodel"))
    cv.setInput(x)
    theirs = cv.forward()
    assert theirs.shape == ours.shape == (1, 1000, 1, 1)
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()
