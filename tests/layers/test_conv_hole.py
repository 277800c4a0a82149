"""DeepLab v1's ``hole`` (its name for dilation): values from deeplab-public's im2col-with-holes formula,
V1 files keep it through the upgrade, errors, and OpenCV (which knows ``dilation``) as a second opinion."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS
from netspec.passes.upgrade import upgrade_net


def build(param, shape=(1, 2, 9, 10), type_="Convolution"):
    lp = text_format.Parse(f'name: "c" type: "{type_}" bottom: "x" top: "y" convolution_param {{ {param} }}',
                           caffe_pb2.LayerParameter())
    return LAYERS.get(type_).builder(lp, [shape], BuildContext(phase=caffe_pb2.TEST))


def holed_conv(x, w, b, pad, stride, hole_h, hole_w):
    """deeplab-public's im2col with holes + GEMM: tap (i, j) reads padded input row y*stride + i*hole_h."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (kh + (kh - 1) * (hole_h - 1))) // stride + 1
    ow = (wd + 2 * pad[1] - (kw + (kw - 1) * (hole_w - 1))) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for y in range(oh):
        for xx in range(ow):
            for i in range(kh):
                for j in range(kw):
                    patch = xp[:, :, y * stride + i * hole_h, xx * stride + j * hole_w]  # (n, c)
                    out[:, :, y, xx] += patch @ w[:, :, i, j].T
    return out + b[None, :, None, None]


@pytest.mark.parametrize("param,pad,stride,holes", [
    ("kernel_size: 3 pad: 2 hole: 2", (2, 2), 1, (2, 2)),
    ("kernel_size: 3 pad: 1 stride: 2 hole: 3", (1, 1), 2, (3, 3)),
    ("kernel_size: 3 pad_h: 1 pad_w: 2 hole_h: 1 hole_w: 2", (1, 2), 1, (1, 2)),
])
def test_hole_is_dilation(param, pad, stride, holes):
    m = build(f"num_output: 3 {param}")
    torch.manual_seed(0)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(1, 2, 9, 10)
    ref = holed_conv(x.double().numpy(), m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), pad,
                     stride, *holes)
    np.testing.assert_allclose(m(x).detach().double().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert m.dilation == holes


def test_hole_on_deconvolution_and_im2col_too():
    assert build("num_output: 2 kernel_size: 3 hole: 2", type_="Deconvolution").dilation == (2, 2)
    assert build("kernel_size: 3 hole: 2", type_="Im2col").dilation == (2, 2)


@pytest.mark.parametrize("param,msg", [
    ("hole: 2 dilation: 2", "not both"),
    ("hole_h: 2", "both hole_h and hole_w"),
    ("hole: 2 hole_h: 2 hole_w: 2", "give hole, or both"),
    ("hole: 0", "dilation must be positive"),
])
def test_bad_holes(param, msg):
    with pytest.raises(LayerError, match=msg):
        build(f"num_output: 2 kernel_size: 3 {param}")


V1_NET = """
name: "v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 9 input_dim: 9
layers { name: "fc6" type: CONVOLUTION bottom: "data" top: "fc6" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 3 pad: 4 hole: 4 kernel_size: 3 } strict_dim: false }
layers { name: "up" type: INTERP bottom: "fc6" top: "up" interp_param { zoom_factor: 2 } }
"""


def test_v1_file_with_hole_survives_the_upgrade(tmp_path):
    net = text_format.Parse(V1_NET, caffe_pb2.NetParameter())
    up, log = upgrade_net(net)
    conv = up.layer[1]
    assert (conv.type, conv.convolution_param.hole, conv.param[1].lr_mult) == ("Convolution", 4, 2)
    assert up.layer[2].type == "Interp" and up.layer[2].interp_param.zoom_factor == 2
    assert any("strict_dim" in m for m in log)
    p = tmp_path / "v1.prototxt"
    p.write_text(V1_NET)
    n = netspec.Net(str(p), netspec.TEST)
    assert n.blobs["fc6"].data.shape == (1, 3, 9, 9) and n.blobs["up"].data.shape == (1, 3, 17, 17)


def test_v1_softmaxloss_param_becomes_loss_param():
    net = text_format.Parse('layers { name: "loss" type: SOFTMAX_LOSS bottom: "a" bottom: "b" '
                            'softmaxloss_param { ignore_label: 255 } }', caffe_pb2.NetParameter())
    up, _ = upgrade_net(net)
    assert up.layer[0].type == "SoftmaxWithLoss" and up.layer[0].loss_param.ignore_label == 255
    bad = text_format.Parse('layers { name: "loss" type: SOFTMAX_LOSS softmaxloss_param { ignore_label: 1 '
                            'ignore_label: 2 } }', caffe_pb2.NetParameter())
    with pytest.raises(netspec.errors.PrototxtError, match="ignores 2 labels"):
        upgrade_net(bad)


def test_opencv_agrees_with_hole_as_dilation(tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    body = ('layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 3 dim: 17 dim: 17 }} }} }}\n'
            'layer {{ name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param {{ num_output: 4 '
            'kernel_size: 3 pad: 2 {h2} }} }}\n'
            'layer {{ name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param {{ num_output: 5 '
            'kernel_size: 3 pad: 6 {h6} }} }}\n')
    ours = tmp_path / "ours.prototxt"
    ours.write_text(body.format(h2="hole: 2", h6="hole_h: 6 hole_w: 6"))
    theirs = tmp_path / "theirs.prototxt"
    theirs.write_text(body.format(h2="dilation: 2", h6="dilation: 6"))
    torch.manual_seed(0)
    net = netspec.Net(str(ours), netspec.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():  # the prototxt has no fillers: random weights and biases
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape)
    w = tmp_path / "w.caffemodel"
    net.save(str(w))
    x = np.random.default_rng(0).standard_normal((1, 3, 17, 17)).astype(np.float32)
    y = net.forward(x=x)["c2"]
    cv = cv2.dnn.readNetFromCaffe(str(theirs), str(w))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)
    cv.setInput(x)
    ref = cv.forward()
    assert ref.shape == y.shape
    assert np.abs(y).max() > 1 and np.abs(ref - y).max() <= 1e-4 * np.abs(y).max()


def test_hole_gradients():
    """DeepLab v1 back-propagates through im2col with holes (col2im_gpu with holes); gradcheck the module."""
    m = build("num_output: 2 kernel_size: 3 pad: 2 hole_h: 2 hole_w: 1", shape=(1, 2, 5, 6)).double()
    torch.manual_seed(0)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: m(a), (x,))
