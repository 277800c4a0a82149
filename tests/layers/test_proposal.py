"""Faster R-CNN proposals: the built-in py-faster-rcnn ``Python`` ProposalLayer and the ``Proposal`` type
against a numpy transcription of lib/rpn/proposal_layer.py (+ bbox_transform_inv, clip_boxes, py_cpu_nms),
OpenCV's Proposal layer, and the released Faster R-CNN test nets (py-faster-rcnn, VGG16 and ZF)."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.errors import LayerError
from netspec.layers.proposal import _param_dict, generate_anchors, nms
from netspec.net.pycaffe import Net

DATA = Path(__file__).resolve().parents[1] / "data" / "forks" / "faster_rcnn"

#: generate_anchors() of py-faster-rcnn lib/rpn/generate_anchors.py, as that code prints it (its comment's
#: table is the 1-based MATLAB original, one pixel off).
FORK_ANCHORS = np.array([
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], float)


def fork_proposals(scores, deltas, im_info, stride, pre, post, thresh, min_size, anchors=FORK_ANCHORS):
    """proposal_layer.py forward with py_cpu_nms, in float32 (the blobs' dtype)."""
    A = len(anchors)
    s = scores[:, A:]
    H, W = s.shape[-2:]
    sx, sy = np.meshgrid(np.arange(W) * stride, np.arange(H) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    anc = (anchors.reshape(1, A, 4) + shifts.reshape(1, -1, 4).transpose(1, 0, 2)).reshape(-1, 4)
    d = deltas.transpose(0, 2, 3, 1).reshape(-1, 4)
    s = s.transpose(0, 2, 3, 1).reshape(-1)
    b = anc.astype(np.float32)
    w = b[:, 2] - b[:, 0] + 1.0
    h = b[:, 3] - b[:, 1] + 1.0
    cx, cy = b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h
    pcx, pcy = d[:, 0] * w + cx, d[:, 1] * h + cy
    pw, ph = np.exp(d[:, 2]) * w, np.exp(d[:, 3]) * h
    p = np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)
    p[:, 0::2] = np.maximum(np.minimum(p[:, 0::2], im_info[1] - 1), 0)
    p[:, 1::2] = np.maximum(np.minimum(p[:, 1::2], im_info[0] - 1), 0)
    ms = min_size * im_info[2]
    keep = np.where((p[:, 2] - p[:, 0] + 1 >= ms) & (p[:, 3] - p[:, 1] + 1 >= ms))[0]
    p, s = p[keep], s[keep]
    order = np.argsort(-s, kind="stable")[:pre]
    p, s = p[order], s[order]
    x1, y1, x2, y2 = p.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, kept = np.arange(len(p)), []
    while order.size:  # py_cpu_nms
        i = order[0]
        kept.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    kept = kept[:post]
    return np.hstack([np.zeros((len(kept), 1), np.float32), p[kept]]), s[kept][:, None]


def rpn_inputs(seed, H=6, W=7, spread=0.3):
    rng = np.random.default_rng(seed)
    return (rng.random((1, 18, H, W)).astype(np.float32),
            (rng.standard_normal((1, 36, H, W)) * spread).astype(np.float32))


def python_net(tmp_path, tops=("rois",), param_str="'feat_stride': 16", H=6, W=7):
    p = tmp_path / "proposal.prototxt"
    top = " ".join(f'top: "{t}"' for t in tops)
    p.write_text(f"""input: "s" input_shape {{ dim: 1 dim: 18 dim: {H} dim: {W} }}
input: "d" input_shape {{ dim: 1 dim: 36 dim: {H} dim: {W} }}
input: "im_info" input_shape {{ dim: 1 dim: 3 }}
layer {{ name: "proposal" type: "Python" bottom: "s" bottom: "d" bottom: "im_info" {top}
  python_param {{ module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "{param_str}" }} }}
""")
    return p


def test_anchors_are_the_forks():
    np.testing.assert_array_equal(generate_anchors(), FORK_ANCHORS)
    assert generate_anchors(scales=(8,)).tolist() == FORK_ANCHORS[[0, 3, 6]].tolist()


@pytest.mark.parametrize("phase,pre,post", [(netspec.TEST, 6000, 300), (netspec.TRAIN, 12000, 2000)])
@pytest.mark.parametrize("im_info", [[96, 112, 1.0], [96, 112, 1.5], [200, 180, 0.5]])
def test_builtin_python_layer_matches_the_fork(tmp_path, phase, pre, post, im_info):
    s, d = rpn_inputs(1)
    info = np.array([im_info], np.float32)
    net = Net(str(python_net(tmp_path, tops=("rois", "scores"))), phase)
    out = net.forward(s=s, d=d, im_info=info)
    rois, scores = fork_proposals(s, d, info[0], 16, pre, post, 0.7, 16)
    assert len(rois) > 1
    np.testing.assert_allclose(out["rois"], rois, rtol=1e-6, atol=1e-4)  # exp() may differ in the last bit
    np.testing.assert_array_equal(out["scores"], scores)


def test_post_nms_top_n_by_phase(tmp_path):
    s, d = rpn_inputs(2, H=24, W=24, spread=0.5)
    info = np.array([[384, 384, 0.1]], np.float32)
    counts = {}
    for phase in (netspec.TEST, netspec.TRAIN):
        net = Net(str(python_net(tmp_path, H=24, W=24)), phase)
        counts[phase] = len(net.forward(s=s, d=d, im_info=info)["rois"])
    assert counts[netspec.TEST] == 300 and counts[netspec.TRAIN] > 300
    rois, _ = fork_proposals(s, d, info[0], 16, 12000, 2000, 0.7, 16)
    assert counts[netspec.TRAIN] == len(rois)


def test_proposal_type_equals_the_python_layer(tmp_path):
    s, d = rpn_inputs(3)
    info = np.array([[96, 112, 1.0]], np.float32)
    py = Net(str(python_net(tmp_path)), netspec.TEST).forward(s=s, d=d, im_info=info)["rois"]
    p = tmp_path / "native.prototxt"
    p.write_text(python_net(tmp_path).read_text().split("layer")[0] +
                 'layer { name: "proposal" type: "Proposal" bottom: "s" bottom: "d" bottom: "im_info" top: "rois" '
                 'proposal_param { feat_stride: 16 } }\n')
    native = Net(str(p), netspec.TEST).forward(s=s, d=d, im_info=info)["rois"]
    np.testing.assert_array_equal(py, native)


def test_nms_keeps_the_best_and_drops_overlaps_above_the_threshold():
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 8], [20, 20, 29, 29], [0, 0, 9, 4]], dtype=torch.float32)
    # IoU(0, 1) = 90/100 = 0.9 -> dropped; IoU(0, 3) = 50/100 = 0.5 -> kept at 0.5 (only > drops), not at 0.4
    assert nms(boxes, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, 0.4).tolist() == [0, 2]
    assert nms(boxes, 0.5, limit=2).tolist() == [0, 2]


@pytest.mark.parametrize("text,expect", [
    ("'feat_stride': 16", {"feat_stride": 16}),
    ("'feat_stride': 16 \n'scales': !!python/tuple [4, 8, 16, 32]", {"feat_stride": 16, "scales": (4, 8, 16, 32)}),
    ("feat_stride: 8\nscales: [8, 16]", {"feat_stride": 8, "scales": [8, 16]}),
    ("{'feat_stride': 8, 'scales': (4, 8)}", {"feat_stride": 8, "scales": (4, 8)}),
])
def test_param_str(text, expect):
    assert _param_dict(text) == expect


def test_param_str_without_feat_stride(tmp_path):
    with pytest.raises(LayerError, match="feat_stride"):
        Net(str(python_net(tmp_path, param_str="'scales': (8, 16)")), netspec.TEST)


def test_bad_bottoms(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('input: "s" input_shape { dim: 1 dim: 10 dim: 3 dim: 3 }\n'
                 'input: "d" input_shape { dim: 1 dim: 36 dim: 3 dim: 3 }\n'
                 'input: "im_info" input_shape { dim: 1 dim: 3 }\n'
                 'layer { name: "p" type: "Proposal" bottom: "s" bottom: "d" bottom: "im_info" top: "rois" }\n')
    with pytest.raises(LayerError, match=r"layer 'p' \(Proposal\).*2 \* 9 anchors"):
        Net(str(p), netspec.TEST)


def test_same_outputs_in_opencv(tmp_path):
    """OpenCV's Proposal layer skips the min_size filter (commented out in proposal_layer.cpp), so the
    comparison sets min_size: 0; OpenCV pads its output to post_nms_topn rows with zeros."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    p = tmp_path / "opencv.prototxt"
    p.write_text('input: "s" input_shape { dim: 1 dim: 18 dim: 6 dim: 7 }\n'
                 'input: "d" input_shape { dim: 1 dim: 36 dim: 6 dim: 7 }\n'
                 'input: "im_info" input_shape { dim: 1 dim: 3 }\n'
                 'layer { name: "proposal" type: "Proposal" bottom: "s" bottom: "d" bottom: "im_info" top: "rois" '
                 'proposal_param { feat_stride: 16 min_size: 0 ratio: 0.5 ratio: 1 ratio: 2 '
                 'scale: 8 scale: 16 scale: 32 } }\n')
    net = Net(str(p), netspec.TEST)
    cv = cv2.dnn.readNetFromCaffe(str(p))
    for seed in range(3):
        s, d = rpn_inputs(seed)
        info = np.array([[96, 112, 1.0]], np.float32)
        ours = net.forward(s=s, d=d, im_info=info)["rois"]
        for name, v in (("s", s), ("d", d), ("im_info", info)):
            cv.setInput(v, name)
        theirs = cv.forward("proposal")
        assert not theirs[len(ours):].any()
        np.testing.assert_allclose(theirs[:len(ours)], ours, rtol=1e-4, atol=1e-3)


def run_faster_rcnn(name):
    t = time.perf_counter()
    net = Net(str(DATA / f"{name}_test.prototxt"), netspec.TEST)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for blobs in net.params.values():
            for b in blobs:
                fan = max(1, b.data[0].size) if b.data.ndim > 1 else 1
                b.data[...] = rng.standard_normal(b.shape, np.float32) * (fan ** -0.5 if b.data.ndim > 1 else 0.1)
    x = rng.standard_normal((1, 3, 224, 224), np.float32) * 50
    out = net.forward(data=x, im_info=np.array([[224, 224, 1]], np.float32))
    rois = net.blobs["rois"].data
    R = len(rois)
    assert 0 < R <= 300 and (rois[:, 0] == 0).all()
    assert (rois[:, 1:] >= 0).all() and (rois[:, 3:] <= 223).all()
    assert out["cls_prob"].shape == (R, 21) and out["bbox_pred"].shape == (R, 84)
    np.testing.assert_allclose(out["cls_prob"].sum(1), 1, rtol=1e-5)
    return time.perf_counter() - t


@pytest.mark.slow
def test_zf_faster_rcnn_test_net_runs_as_released():
    run_faster_rcnn("ZF")  # ~3-8 s on 2 CPU cores (fc6 on every proposal)


@pytest.mark.slow
def test_vgg16_faster_rcnn_test_net_runs_as_released():
    run_faster_rcnn("VGG16")  # ~15 s on 2 CPU cores


def test_zf_faster_rcnn_test_net_builds():
    """The released ZF test net builds (Reshape, Softmax, Python proposal, ROIPooling, Dropout scale_train:
    false); the shapes before a forward are Caffe's setup shapes. VGG16's build is in the slow test."""
    net = Net(str(DATA / "ZF_test.prototxt"), netspec.TEST)
    assert net.blobs["rois"].shape == (1, 5)
    assert net.blobs["roi_pool_conv5"].shape == (1, 256, 6, 6)
    assert net.blobs["cls_prob"].shape == (1, 21)


@pytest.mark.parametrize("phase", [netspec.TEST, netspec.TRAIN])
def test_dropout_scale_train_false(phase):
    """caffe-fast-rcnn dropout_layer.cpp with scale_train: false (the ZF net): TRAIN keeps x * mask without the
    1 / (1 - p) scaling, TEST gives x * (1 - p); gradients alike."""
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    text = """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 1000 } } }
layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 scale_train: false } }"""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)
    x = np.random.default_rng(0).random((4, 1000)).astype(np.float32) + 1
    y = net.forward(x=x)["y"]
    net.blobs["y"].diff[...] = 1
    net.backward()
    if phase == netspec.TEST:
        np.testing.assert_allclose(y, x * 0.75, rtol=1e-6)
        np.testing.assert_allclose(net.blobs["x"].diff, 0.75, rtol=1e-6)
    else:
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept], rtol=1e-6)
        assert 0.6 < kept.mean() < 0.9
        np.testing.assert_array_equal(net.blobs["x"].diff, kept.astype(np.float32))


def test_builtin_layer_needs_no_code_and_works_when_python_layers_are_forbidden(tmp_path, monkeypatch):
    import sys
    monkeypatch.setattr(sys.modules["netspec.layers.python"], "FORBID", True)
    s, d = rpn_inputs(4)
    info = np.array([[96, 112, 1.0]], np.float32)
    rois = Net(str(python_net(tmp_path)), netspec.TEST).forward(s=s, d=d, im_info=info)["rois"]
    np.testing.assert_allclose(rois, fork_proposals(s, d, info[0], 16, 6000, 300, 0.7, 16)[0], rtol=1e-6, atol=1e-4)


def test_param_str_scales_and_ratios(tmp_path):
    s = np.random.default_rng(5).random((1, 8, 5, 5)).astype(np.float32)  # 4 anchors: 2 ratios x 2 scales
    d = np.zeros((1, 16, 5, 5), np.float32)
    info = np.array([[80, 80, 1.0]], np.float32)
    p = python_net(tmp_path, param_str="'feat_stride': 16, 'scales': (4, 8), 'ratios': (1, 2)")
    p.write_text(p.read_text().replace("dim: 18", "dim: 8").replace("dim: 36", "dim: 16")
                 .replace("dim: 6 dim: 7", "dim: 5 dim: 5"))
    rois = Net(str(p), netspec.TEST).forward(s=s, d=d, im_info=info)["rois"]
    anchors = generate_anchors(ratios=(1, 2), scales=(4, 8))
    expect, _ = fork_proposals(s, d, info[0], 16, 6000, 300, 0.7, 16, anchors=anchors)
    np.testing.assert_allclose(rois, expect, rtol=1e-6, atol=1e-4)


@pytest.mark.slow
def test_coco_faster_rcnn_test_net_runs_as_released():  # ~1-3 s
    """py-faster-rcnn models/coco/VGG_CNN_M_1024/faster_rcnn_end2end/test.prototxt: 12 anchors from the YAML
    param_str "'scales': !!python/tuple [4, 8, 16, 32]", 81 classes."""
    net = Net(str(DATA / "coco_VGG_CNN_M_1024_test.prototxt"), netspec.TEST)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224), np.float32) * 50
    out = net.forward(data=x, im_info=np.array([[224, 224, 1]], np.float32))
    assert net.blobs["rpn_cls_prob_reshape"].shape[:2] == (1, 24)  # 2 x 12 anchors
    R = len(net.blobs["rois"].data)
    assert 0 < R <= 300 and out["cls_prob"].shape == (R, 81) and out["bbox_pred"].shape == (R, 324)


def test_zf_fast_rcnn_test_net_takes_rois():
    """Fast R-CNN (no RPN): models/pascal_voc/ZF/fast_rcnn/test.prototxt with rois as a net input."""
    net = Net(str(DATA / "ZF_fast_rcnn_test.prototxt"), netspec.TEST)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224), np.float32)
    rois = np.array([[0, 0, 0, 100, 100], [0, 50, 60, 200, 220], [0, 10, 10, 12, 12]], np.float32)
    out = net.forward(data=x, rois=rois)
    assert net.blobs["roi_pool_conv5"].shape == (3, 256, 6, 6)
    assert out["cls_prob"].shape == (3, 21) and out["bbox_pred"].shape == (3, 84)
