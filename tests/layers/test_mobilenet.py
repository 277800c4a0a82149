"""MobileNet forks' layers: DepthwiseConvolution (yonghenglh6, eric612/MobileNet-YOLO), ConvolutionDepthwise
(BVLC PR #5665 conv_dw_layer.cpp) and ReLU6, against the forks' loops written out here, gradients, and OpenCV."""
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


def build(type_name, fields, shape):
    lp = text_format.Parse(f'name: "l" type: "{type_name}" bottom: "x" top: "y" {fields}', caffe_pb2.LayerParameter())
    return LAYERS.get(type_name).builder(lp, [tuple(shape)], BuildContext(phase=caffe_pb2.TEST))


def conv_dw_loop(x, w, b, stride, pad, dilation):
    """ConvolutionDepthwiseLayer::Forward_cpu: per channel c, value += w[c, kh, kw] * x[c, h_in, w_in] over
    the taps inside the image, then + bias[c]."""
    N, C, H, W = x.shape
    kh, kw = w.shape[-2:]
    oh = (H + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (W + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for h in range(oh):
                for ww in range(ow):
                    v = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            hi = -pad[0] + h * stride[0] + i * dilation[0]
                            wi = -pad[1] + ww * stride[1] + j * dilation[1]
                            if 0 <= hi < H and 0 <= wi < W:
                                v += w[c, 0, i, j] * x[n, c, hi, wi]
                    out[n, c, h, ww] = v + (b[c] if b is not None else 0.0)
    return out


@pytest.mark.parametrize("fields,stride,pad,dilation", [
    ("kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1)),
    ("kernel_size: 3 stride: 2 pad: 1 num_output: 99", (2, 2), (1, 1), (1, 1)),  # num_output is not read
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2", (2, 1), (2, 0), (2, 2)),
    ("kernel_size: 3 bias_term: false", (1, 1), (0, 0), (1, 1)),
])
def test_convolution_depthwise_matches_the_fork_loop(fields, stride, pad, dilation):
    m = build("ConvolutionDepthwise", f"convolution_param {{ {fields} }}", (2, 3, 6, 5)).double()
    C = 3
    assert m.weight.shape[:2] == (C, 1) and (m.bias is None) == ("bias_term: false" in fields)
    with torch.no_grad():
        m.weight.normal_()
        if m.bias is not None:
            m.bias.normal_()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    ref = conv_dw_loop(x.numpy(), m.weight.detach().numpy(), None if m.bias is None else m.bias.detach().numpy(),
                       stride, pad, dilation)
    y = m(x).detach().numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_convolution_depthwise_gradients():
    """The fork's Backward_cpu accumulates the exact derivatives of its forward loop."""
    m = build("ConvolutionDepthwise", "convolution_param { kernel_size: 2 stride: 2 pad: 1 }", (1, 2, 3, 3)).double()
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    assert torch.autograd.gradcheck(m, (torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True),))


def test_convolution_depthwise_needs_four_axes():
    with pytest.raises(LayerError, match="4-axis"):
        build("ConvolutionDepthwise", "convolution_param { kernel_size: 3 }", (2, 3, 6))


def test_depthwise_convolution_is_a_grouped_convolution():
    """yonghenglh6's Forward_cpu is BaseConvolutionLayer's gemm with convolution_param.group."""
    m = build("DepthwiseConvolution", "convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 "
                                      "bias_term: false }", (1, 4, 5, 5)).double()
    assert m.weight.shape == (4, 1, 3, 3)
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    ref = conv_dw_loop(x.numpy(), m.weight.detach().numpy(), None, (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    g = build("DepthwiseConvolution", "convolution_param { num_output: 6 group: 2 kernel_size: 1 }", (1, 4, 5, 5))
    assert g.weight.shape == (6, 2, 1, 1)  # any group, as the fork's CPU path


def test_relu6_values_and_gradient():
    m = build("ReLU6", "", (1, 7))
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0, 6.0, 6.5, 100.0]], requires_grad=True)
    y = m(x)
    np.testing.assert_array_equal(y.detach().numpy(), [[0, 0, 0.5, 3, 6, 6, 6]])
    y.backward(torch.full_like(y, 2.0))
    # the fork's Backward_cpu: top_diff * (0 < x < 6): no gradient at exactly 0 or 6
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 2, 2, 0, 0, 0]])


NET = """input: "data" input_shape { dim: 2 dim: 4 dim: 9 dim: 9 }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "data" top: "dw"
  convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "cdw" type: "ConvolutionDepthwise" bottom: "dw" top: "cdw"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU6" bottom: "cdw" top: "out" }
"""


def test_same_as_opencv(tmp_path):
    """OpenCV 4 reads ConvolutionDepthwise and ReLU6; DepthwiseConvolution goes to it as type Convolution
    (the rename yonghenglh6's transferTypeToDepthwiseConvolution.py does the other way)."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    proto = tmp_path / "dw.prototxt"
    proto.write_text(NET)
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape) * (1.0 if b.data.ndim > 1 else 0.5)
    weights = tmp_path / "dw.caffemodel"
    net.save(str(weights))
    x = (rng.standard_normal((2, 4, 9, 9)) * 3).astype(np.float32)
    ours = net.forward(data=x)["out"]
    assert 0 < (ours == 6).sum() < ours.size and (ours == 0).sum() > 0  # both clamps are exercised
    cv_proto = tmp_path / "dw_cv.prototxt"
    cv_proto.write_text(NET.replace('"DepthwiseConvolution"', '"Convolution"'))
    cv = cv2.dnn.readNetFromCaffe(str(cv_proto), str(weights))
    cv.setInput(x)
    theirs = cv.forward()
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
