"""Released SSD / MobileNet-SSD deploy prototxts (tests/data/forks/ssd/, SOURCES.md there) build and run
forward as released, with random weights that netspec writes, and agree with OpenCV's dnn on mbox_loc,
mbox_conf_flatten, mbox_priorbox and the detections."""
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.net.pycaffe import Net

from test_ssd import by_label_then_score, opencv_agrees, random_weights

DATA = Path(__file__).resolve().parents[1] / "data" / "forks" / "ssd"
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]


def detection_layer_agrees(net, tmp_path, rng):
    """The net's own DetectionOutput layer on well-spread heads (N(0, 1) locations, softmax of N(0, 3) logits)
    and the net's priors, in netspec and OpenCV: a random trunk can leave the class scores flat, full of exact
    ties that top_k / keep_top_k cut in an order the fork leaves to std::sort."""
    cv2 = pytest.importorskip("cv2")
    text = (tmp_path / "net.prototxt").read_text()
    det = text[text.index('layer {\n  name: "detection_out"'):]
    loc_n, conf_n, prior_n = "mbox_loc", "mbox_conf_flatten", "mbox_priorbox"
    num_classes = net.blobs[conf_n].shape[1] // (net.blobs[prior_n].shape[2] // 4)
    P = net.blobs[prior_n].shape[2] // 4
    logits = rng.standard_normal((1, P, num_classes)) * 3
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    heads = {loc_n: rng.standard_normal(net.blobs[loc_n].shape).astype(np.float32),
             conf_n: conf.reshape(1, -1).astype(np.float32), prior_n: net.blobs[prior_n].data.copy()}
    inputs = "".join(f'input: "{n}" input_shape {{ {" ".join(f"dim: {d}" for d in v.shape)} }}\n'
                     for n, v in heads.items())
    proto = tmp_path / "detection_out.prototxt"
    proto.write_text(inputs + det)
    ours = Net(str(proto), netspec.TEST).forward(**heads)["detection_out"]
    cv = cv2.dnn.readNetFromCaffe(str(proto))
    for n, v in heads.items():
        cv.setInput(v, n)
    a, b = by_label_then_score(ours), by_label_then_score(cv.forward("detection_out"))
    assert len(a) > 10 and a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def run_and_compare(proto, tmp_path, names=HEADS, cv_text=None):
    """Random weights written by netspec; the named blobs compared with OpenCV (detection_out as rows); the
    net's DetectionOutput layer also compared on well-spread heads (detection_layer_agrees)."""
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    random_weights(net, rng)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    out = net.forward(data=x)
    cv_proto = None
    if cv_text is not None:
        cv_proto = tmp_path / "cv.prototxt"
        cv_proto.write_text(cv_text)
    errors = opencv_agrees(proto, weights, net, x, names, cv_proto)
    if "detection_out" in net.blobs:
        (tmp_path / "net.prototxt").write_text(Path(proto).read_text())
        errors["DetectionOutput on spread heads"] = detection_layer_agrees(net, tmp_path, rng)
    assert max(errors.values()) <= 1e-4, errors
    return net, out


def test_mobilenet_ssd_deploy(tmp_path):
    """chuanqi305/MobileNet-SSD voc/MobileNetSSD_deploy.prototxt (BatchNorm merged), 300 x 300."""
    net, out = run_and_compare(DATA / "MobileNetSSD_deploy.prototxt", tmp_path)
    assert net.blobs["mbox_priorbox"].shape == (1, 2, 1917 * 4)
    det = out["detection_out"]
    assert det.shape[:2] == (1, 1) and det.shape[3] == 7 and det.shape[2] > 1  # random weights still detect


@pytest.mark.slow
def test_mobilenet_ssd_deploy_with_batchnorm(tmp_path):
    """chuanqi305/MobileNet-SSD deploy.prototxt (BatchNorm + Scale, the training-time form), 300 x 300; about
    2 s on 2 CPU cores (the merged form above runs in the quick suite)."""
    net, _ = run_and_compare(DATA / "MobileNetSSD_deploy_bn.prototxt", tmp_path)
    assert net.blobs["mbox_loc"].shape == (1, 1917 * 4)


def test_vgg_ssd300_builds():
    """weiliu89 SSD300 VGG16 VOC0712 deploy: 8732 priors, 21 classes (its forward is test_vgg_ssd300_forward)."""
    net = Net(str(DATA / "VGG_VOC0712_SSD_300x300_deploy.prototxt"), netspec.TEST)
    assert net.blobs["mbox_priorbox"].shape == (1, 2, 8732 * 4)
    assert net.blobs["mbox_loc"].shape == (1, 8732 * 4)
    assert net.blobs["mbox_conf_flatten"].shape == (1, 8732 * 21)
    assert net.blobs["detection_out"].shape == (1, 1, 1, 7)
    assert net.params["conv4_3_norm"][0].shape == (512,)
    assert np.all(net.params["conv4_3_norm"][0].data == 20)  # scale_filler constant 20


@pytest.mark.slow
def test_vgg_ssd300_forward(tmp_path):
    """About 4 s on 2 CPU cores at the released 300 x 300."""
    net, out = run_and_compare(DATA / "VGG_VOC0712_SSD_300x300_deploy.prototxt", tmp_path,
                               HEADS + ["conv4_3_norm"])
    assert out["detection_out"].shape[2] == 200  # keep_top_k


def test_ssdlite_builds():
    """eric612/MobileNet-YOLO SSDLite (MobileNetV2, DepthwiseConvolution) at its 336 x 336."""
    net = Net(str(DATA / "MobileNetV2_SSDLite_deploy.prototxt"), netspec.TEST)
    assert net.blobs["data"].shape == (1, 3, 336, 336)
    assert net.blobs["mbox_conf_flatten"].shape[1] == net.blobs["mbox_loc"].shape[1] // 4 * 21


@pytest.mark.slow
def test_ssdlite_forward(tmp_path):
    """About 3 s on 2 CPU cores. OpenCV reads DepthwiseConvolution as type Convolution (same fields)."""
    proto = DATA / "MobileNetV2_SSDLite_deploy.prototxt"
    cv_text = proto.read_text().replace('"DepthwiseConvolution"', '"Convolution"')
    run_and_compare(proto, tmp_path, HEADS[:3], cv_text=cv_text)  # detections: flat scores, see above


def test_mobilenet_yolo_lite_trunk(tmp_path):
    """eric612/MobileNet-YOLO yolov2 lite deploy (ReLU6, DepthwiseConvolution) up to its last convolution:
    its YoloDetectionOutput layer (and that layer's parameter message) is not SSD's and is cut off here."""
    text = (DATA / "MobileNet_YOLO_lite_deploy.prototxt").read_text()
    text = text[:text.index('layer {\n  name: "detection_out"')]
    proto = tmp_path / "yolo_lite_trunk.prototxt"
    proto.write_text(text)
    net, out = run_and_compare(proto, tmp_path, ["conv22"],
                               cv_text=text.replace('"DepthwiseConvolution"', '"Convolution"'))
    assert out["conv22"].shape[:2] == (1, 125)
