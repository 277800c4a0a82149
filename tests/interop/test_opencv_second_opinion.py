"""OpenCV 4 dnn's Caffe importer as a second opinion: FCN-8s and Dilated FCN-2s (the golden nets' upstream
topologies at reduced width) with random weights that netspec wrote give the same outputs in OpenCV."""
import numpy as np
import pytest
import torch

import netspec
from netspec.net.pycaffe import Net
from netspec.formats.prototxt import parse_net, to_text

cv2 = pytest.importorskip("cv2")


def deploy_copy(src, dst):
    """The golden train net as a deploy net: one Input top 'data', no loss (a proto-to-proto edit)."""
    net = parse_net(src)
    net.ClearField("force_backward")
    keep = []
    for lp in net.layer:
        if lp.type == "SoftmaxWithLoss":
            continue
        if lp.type == "Input":
            del lp.top[1:]
            del lp.input_param.shape[1:]
        keep.append(lp)
    del net.layer[:]
    net.layer.extend(keep)
    dst.write_text(to_text(net))
    return dst


@pytest.mark.parametrize("case", ["fcn8s", "dilated_fcn2s_vgg19"])
def test_same_outputs_in_opencv(case, shared_dir, tmp_path):
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer (OpenCV 5 removed it)")
    proto = deploy_copy(shared_dir / "golden" / "nets" / case / "net.prototxt", tmp_path / "deploy.prototxt")
    torch.manual_seed(1)
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            fan = max(1, b.data[0].size) if b.data.ndim > 1 else 1
            b.data[...] = rng.standard_normal(b.shape) * (np.sqrt(2.0 / fan) if b.data.ndim > 1 else 0.1)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    assert len(net.outputs) == 1
    ours = net.forward(data=x)[net.outputs[0]]
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)  # OpenCV's Winograd convolution trades accuracy for speed
    cv.setInput(x)
    theirs = cv.forward()  # the last layer's output (layer names repeat in Dilated FCN-2s: "Cropping")
    assert theirs.shape == ours.shape
    assert np.linalg.norm(theirs - ours) <= 1e-5 * np.linalg.norm(ours)
