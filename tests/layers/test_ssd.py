"""SSD layers (weiliu89/caffe branch ssd): Normalize, Permute, PriorBox, DetectionOutput against values derived
by hand from the fork's formulas (normalize_layer.cpp, permute_layer.cpp, prior_box_layer.cpp,
detection_output_layer.cpp, bbox_util.cpp), gradients by gradcheck, and OpenCV's dnn as a second opinion on a
small SSD-like net (tests/layers/test_ssd_nets.py runs the released SSD prototxts)."""
import math

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


def build(type_name, fields, *shapes):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    lp = text_format.Parse(f'name: "l" type: "{type_name}" {bottoms} top: "y" {fields}', caffe_pb2.LayerParameter())
    return LAYERS.get(type_name).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


# -- Normalize ------------------------------------------------------------------------------------------------

def test_normalize_per_position_with_channel_scales():
    m = build("Normalize", "norm_param { across_spatial: false channel_shared: false "
                           "scale_filler { type: 'constant' value: 20 } }", (1, 2, 1, 2))
    assert m.scale.shape == (2,) and torch.equal(m.scale.data, torch.full((2,), 20.0))
    with torch.no_grad():
        m.scale.copy_(torch.tensor([2.0, 10.0]))
    x = torch.tensor([[[[3.0, 0.0]], [[4.0, -2.0]]]])  # positions (3, 4) and (0, -2): norms 5 and 2
    y = m(x).detach()
    np.testing.assert_allclose(y[0, :, 0, 0].numpy(), [2 * 3 / 5, 10 * 4 / 5], rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 0, 1].numpy(), [0.0, 10 * -2 / 2], rtol=1e-6)


def test_normalize_across_spatial_with_one_shared_scale():
    m = build("Normalize", "", (2, 2, 1, 2))  # defaults: across_spatial, channel_shared, scale 1
    assert m.scale.shape == () and m.scale.item() == 1.0
    x = torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]], [[[0.0, 0.0]], [[0.0, 3.0]]]])  # sums of squares 25, 9
    y = m(x).detach()
    np.testing.assert_allclose(y[0].numpy().ravel(), np.array([1, 2, 2, 4]) / 5, rtol=1e-6)
    np.testing.assert_allclose(y[1].numpy().ravel(), [0, 0, 0, 1], rtol=1e-6)
    z = m(torch.zeros(1, 2, 1, 2)).detach()  # eps (1e-10) under the root: zero in, zero out
    assert torch.equal(z, torch.zeros(1, 2, 1, 2))


@pytest.mark.parametrize("fields", ["norm_param { across_spatial: false channel_shared: false }",
                                    "norm_param { across_spatial: true channel_shared: true }"])
def test_normalize_gradients(fields):
    """The fork's Backward_cpu is the exact derivative of x / sqrt(sum x^2 + eps) * scale."""
    m = build("Normalize", fields, (2, 3, 2, 2)).double()
    with torch.no_grad():
        m.scale.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_normalize_two_axis_bottom():
    m = build("Normalize", "norm_param { across_spatial: false }", (2, 3))
    x = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(m(x).detach().numpy(), [[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], rtol=1e-6)


# -- Permute --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,order", [
    ("order: 0 order: 2 order: 3 order: 1", (0, 2, 3, 1)),  # SSD's NCHW -> NHWC
    ("order: 0 order: 2", (0, 2, 1, 3)),                    # the axes not listed follow in their order
    ("order: 3", (3, 0, 1, 2)),
    ("", (0, 1, 2, 3)),
])
def test_permute_orders(fields, order):
    m = build("Permute", f"permute_param {{ {fields} }}", (2, 3, 4, 5))
    x = torch.arange(120.0).reshape(2, 3, 4, 5)
    y = m(x)
    ref = np.transpose(x.numpy(), order)
    assert y.shape == ref.shape and np.array_equal(y.numpy(), ref)
    # the fork's Permute(): top[i] = bottom[sum_j (i / new_steps[j]) % ... * old_steps[order[j]]]
    old_steps = [60, 20, 5, 1]
    new_shape = [x.shape[o] for o in order]
    new_steps = [math.prod(new_shape[j + 1:]) for j in range(4)]
    flat = x.numpy().ravel()
    for i in (0, 7, 59, 119):
        idx, old = i, 0
        for j in range(4):
            old += (idx // new_steps[j]) * old_steps[order[j]]
            idx %= new_steps[j]
        assert y.numpy().ravel()[i] == flat[old]


@pytest.mark.parametrize("fields,msg", [("order: 4", "out of range"), ("order: 1 order: 1", "twice")])
def test_permute_bad_orders(fields, msg):
    with pytest.raises(LayerError, match=msg):
        build("Permute", f"permute_param {{ {fields} }}", (2, 3, 4, 5))


# -- PriorBox -------------------------------------------------------------------------------------------------

def test_prior_box_values_by_hand():
    """2 x 2 feature map on a 20 x 20 image: step 10, centres 5 and 15. min_size 4.7 is read as int 4 (the
    fork's int local); priors per cell: 4x4, sqrt(4*9)=6 square, ar 2 (w 4*sqrt2, h 4/sqrt2), ar 1/2."""
    m = build("PriorBox", "prior_box_param { min_size: 4.7 max_size: 9 aspect_ratio: 2 flip: true "
                          "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }", (1, 8, 2, 2), (1, 3, 20, 20))
    assert infer_top_shapes(m, [(1, 8, 2, 2), (1, 3, 20, 20)]) == [(1, 2, 2 * 2 * 4 * 4)]
    y = m(torch.zeros(1, 8, 2, 2), torch.zeros(1, 3, 20, 20))
    assert y.shape == (1, 2, 64)
    boxes = y[0, 0].reshape(2, 2, 4, 4).numpy()  # (h, w, prior, corner)
    r2 = math.sqrt(2)
    want00 = [[3, 3, 7, 7], [2, 2, 8, 8], [5 - 2 * r2, 5 - r2, 5 + 2 * r2, 5 + r2], [5 - r2, 5 - 2 * r2, 5 + r2, 5 + 2 * r2]]
    np.testing.assert_allclose(boxes[0, 0], np.array(want00) / 20, rtol=1e-6)
    np.testing.assert_allclose(boxes[1, 0, 0], np.array([3, 13, 7, 17]) / 20, rtol=1e-6)  # row 1: cy = 15
    np.testing.assert_allclose(boxes[0, 1, 1], np.array([12, 2, 18, 8]) / 20, rtol=1e-6)  # column 1: cx = 15
    np.testing.assert_allclose(y[0, 1].reshape(-1, 4).numpy(), np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)), rtol=1e-7)


def test_prior_box_explicit_image_step_offset_clip_and_one_variance():
    m = build("PriorBox", "prior_box_param { min_size: 10 img_h: 40 img_w: 20 step_h: 8 step_w: 4 offset: 0 "
                          "clip: true variance: 0.3 }", (1, 1, 2, 3))
    y = m(torch.zeros(1, 1, 2, 3))  # no image bottom needed
    boxes = y[0, 0].reshape(2, 3, 4).numpy()
    # cell (1, 2): centre (2 * 4, 1 * 8) = (8, 8); box 10 x 10; x over 20, y over 40; clipped to [0, 1]
    np.testing.assert_allclose(boxes[1, 2], [3 / 20, 3 / 40, 13 / 20, 13 / 40], rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 0], [0, 0, 5 / 20, 5 / 40], rtol=1e-6)  # (-5, -5) clipped to 0
    assert np.all(y[0, 1].numpy() == np.float32(0.3))


def test_prior_box_aspect_ratio_list():
    """Ratio 1 first; a repeat (within 1e-6) is dropped; flip adds 1/r after each new r; no variance = 0.1."""
    m = build("PriorBox", "prior_box_param { min_size: 2 min_size: 4 aspect_ratio: 1 aspect_ratio: 3 "
                          "aspect_ratio: 3.0000001 }", (1, 1, 1, 1), (1, 1, 8, 8))
    assert m.aspect_ratios == [1.0, 3.0, pytest.approx(1 / 3)]
    y = m(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 8, 8))
    assert y.shape == (1, 2, 2 * 3 * 4)
    b = y[0, 0].reshape(6, 4).numpy() * 8  # back to pixels; centre (4, 4)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    np.testing.assert_allclose(w, [2, 2 * math.sqrt(3), 2 / math.sqrt(3), 4, 4 * math.sqrt(3), 4 / math.sqrt(3)], rtol=1e-5)
    np.testing.assert_allclose(h, [2, 2 / math.sqrt(3), 2 * math.sqrt(3), 4, 4 / math.sqrt(3), 4 * math.sqrt(3)], rtol=1e-5)
    assert np.all(y[0, 1].numpy() == np.float32(0.1))


@pytest.mark.parametrize("fields,shapes,msg", [
    ("", [(1, 1, 2, 2), (1, 1, 8, 8)], "needs min_size"),
    ("min_size: 4 max_size: 3", [(1, 1, 2, 2), (1, 1, 8, 8)], "greater than min_size"),
    ("min_size: 4 variance: 0.1 variance: 0.2", [(1, 1, 2, 2), (1, 1, 8, 8)], "1 or 4 values"),
    ("min_size: 4 img_size: 8 img_h: 8 img_w: 8", [(1, 1, 2, 2)], "not both"),
    ("min_size: 4 step: 8 step_h: 8 step_w: 8", [(1, 1, 2, 2), (1, 1, 8, 8)], "not both"),
    ("min_size: 4", [(1, 1, 2, 2)], "2nd bottom"),
])
def test_prior_box_bad_parameters(fields, shapes, msg):
    with pytest.raises(LayerError, match=msg):
        build("PriorBox", f"prior_box_param {{ {fields} }}", *shapes)


# -- DetectionOutput ------------------------------------------------------------------------------------------

A, B, C = [0.0, 0.0, 0.5, 0.5], [0.05, 0.05, 0.55, 0.55], [0.5, 0.5, 1.0, 1.0]
# IoU(A, B) = 0.45^2 / (0.25 + 0.25 - 0.45^2) = 0.6807; C touches A at a corner (IoU 0) and overlaps B by 0.05^2
SCORES = [[0.0, 0.9, 0.1], [0.0, 0.8, 0.6], [0.0, 0.7, 0.05]]  # per prior: background, class 1, class 2


def detect(fields, loc=None, scores=SCORES, priors=(A, B, C), variance=(0.1, 0.1, 0.2, 0.2), num=1):
    P = len(priors)
    prior = torch.tensor([list(np.ravel(priors)), list(variance) * P], dtype=torch.float32)[None]
    loc = torch.zeros(num, P * 4) if loc is None else torch.as_tensor(loc, dtype=torch.float32).reshape(num, -1)
    conf = torch.tensor(scores, dtype=torch.float32).reshape(num, -1)
    m = build("DetectionOutput", f"detection_output_param {{ num_classes: 3 {fields} }}",
              tuple(loc.shape), tuple(conf.shape), tuple(prior.shape))
    return m(loc, conf, prior)


def rows(*spec):
    return np.array([[i, label, score, *box] for i, label, score, box in spec], np.float32)


def test_detection_output_nms_by_hand():
    y = detect("nms_param { nms_threshold: 0.45 }")
    assert y.shape == (1, 1, 4, 7)
    # class 1: A (0.9) kept, B suppressed by A, C kept (no overlap); class 2: B (0.6), A suppressed, C kept
    want = rows((0, 1, 0.9, A), (0, 1, 0.7, C), (0, 2, 0.6, B), (0, 2, 0.05, C))
    np.testing.assert_allclose(y[0, 0].numpy(), want, rtol=1e-6, atol=1e-7)


def test_detection_output_keep_top_k_top_k_and_threshold():
    y = detect("nms_param { nms_threshold: 0.45 } keep_top_k: 3")  # best 3 over classes, then by label
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 1, 0.9, A), (0, 1, 0.7, C), (0, 2, 0.6, B)), rtol=1e-6)
    y = detect("nms_param { nms_threshold: 0.45 top_k: 1 }")  # one candidate per class before NMS
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 1, 0.9, A), (0, 2, 0.6, B)), rtol=1e-6)
    y = detect("nms_param { nms_threshold: 0.45 } confidence_threshold: 0.65")  # score > threshold
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 1, 0.9, A), (0, 1, 0.7, C)), rtol=1e-6)


def test_detection_output_adaptive_eta():
    y = detect("nms_param { nms_threshold: 0.7 }")  # 0.6807 <= 0.7: B survives A in class 1
    assert [tuple(r[1:3]) for r in y[0, 0].numpy().round(4)][:3] == [(1, 0.9), (1, 0.8), (1, 0.7)]
    y = detect("nms_param { nms_threshold: 0.7 eta: 0.9 }")  # after keeping A: 0.63 < 0.6807, B goes
    assert [tuple(r[1:3]) for r in y[0, 0].numpy().round(4)][:2] == [(1, 0.9), (1, 0.7)]


def test_detection_output_nothing_kept():
    y = detect("confidence_threshold: 0.95", loc=torch.zeros(2, 12), scores=SCORES * 2, num=2)
    np.testing.assert_array_equal(y.numpy(), [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])


def test_detection_output_two_images_and_background():
    scores = SCORES + [[0.0, 0.1, 0.2]] * 3
    y = detect("nms_param { nms_threshold: 0.45 } confidence_threshold: 0.5", loc=torch.zeros(2, 12),
               scores=scores, num=2)
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 1, 0.9, A), (0, 1, 0.7, C), (0, 2, 0.6, B)), rtol=1e-6)
    y = detect("nms_param { nms_threshold: 0.45 } background_label_id: 1 confidence_threshold: 0.5")
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 2, 0.6, B)), rtol=1e-6)  # class 1 is skipped


PRIOR = [0.2, 0.2, 0.6, 0.4]
LOC = [1.0, -2.0, 0.5, 0.0]


@pytest.mark.parametrize("fields,box", [
    # CENTER_SIZE: centre (0.4, 0.3), size (0.4, 0.2); cx = 0.1*1*0.4 + 0.4, cy = 0.1*-2*0.2 + 0.3,
    # w = exp(0.2*0.5)*0.4, h = exp(0)*0.2
    ("code_type: CENTER_SIZE", [0.44 - 0.2 * math.exp(0.1), 0.26 - 0.1, 0.44 + 0.2 * math.exp(0.1), 0.36]),
    ("code_type: CENTER_SIZE variance_encoded_in_target: true",
     [0.8 - 0.2 * math.exp(0.5), -0.1 - 0.1, 0.8 + 0.2 * math.exp(0.5), 0.0]),
    # CORNER_SIZE: corner + variance * loc * prior size
    ("code_type: CORNER_SIZE", [0.2 + 0.1 * 0.4, 0.2 - 0.1 * 2 * 0.2, 0.6 + 0.2 * 0.5 * 0.4, 0.4]),
    ("code_type: CORNER", [0.2 + 0.1, 0.2 - 0.2, 0.6 + 0.1, 0.4]),  # the default: corner + variance * loc
    ("code_type: CORNER variance_encoded_in_target: true", [1.2, -1.8, 1.1, 0.4]),
])
def test_detection_output_decoding(fields, box):
    y = detect(fields, loc=[LOC], scores=[[0.0, 0.5, 0.0]], priors=(PRIOR,))
    np.testing.assert_allclose(y[0, 0].numpy(), rows((0, 1, 0.5, box), (0, 2, 0.0, box)), rtol=1e-5, atol=1e-6)


def test_detection_output_per_class_locations():
    """share_location false: loc holds per prior one box per class (background's too), classes decode apart."""
    loc = np.zeros((3, 3, 4), np.float32)
    loc[0, 2] = [5.0, 5.0, 5.0, 5.0]  # prior 0, class 2: corners + variance * 5 = (0.5, 0.5, 1.5, 1.5)
    y = detect("share_location: false nms_param { nms_threshold: 0.45 } confidence_threshold: 0.05",
               loc=loc.reshape(1, -1))
    A2 = [0.5, 0.5, 1.5, 1.5]  # overlaps B by 0.05^2 only: no longer suppressed by B in class 2
    want = rows((0, 1, 0.9, A), (0, 1, 0.7, C), (0, 2, 0.6, B), (0, 2, 0.1, A2))
    np.testing.assert_allclose(y[0, 0].numpy(), want, rtol=1e-6)


def apply_nms_fast(boxes, scores, score_threshold, nms_threshold, eta, top_k):
    """bbox_util.cpp ApplyNMSFast line by line (GetMaxScoreIndex's stable sort, JaccardOverlap, the early
    break, the adaptive threshold), on float32 corner boxes."""
    f = np.float32
    pairs = sorted([(scores[i], i) for i in range(len(scores)) if scores[i] > score_threshold], key=lambda p: -p[0])
    if -1 < top_k < len(pairs):
        pairs = pairs[:top_k]

    def size(b):
        return f(0) if b[2] < b[0] or b[3] < b[1] else f(b[2] - b[0]) * f(b[3] - b[1])

    def jaccard(b1, b2):
        if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
            return f(0)
        w = f(min(b1[2], b2[2]) - max(b1[0], b2[0]))
        h = f(min(b1[3], b2[3]) - max(b1[1], b2[1]))
        if w > 0 and h > 0:
            inter = w * h
            return inter / (size(b1) + size(b2) - inter)
        return f(0)

    threshold, indices = f(nms_threshold), []
    for _, idx in pairs:
        keep = True
        for k in indices:
            if keep:
                keep = jaccard(boxes[idx], boxes[k]) <= threshold
            else:
                break
        if keep:
            indices.append(idx)
        if keep and eta < 1 and threshold > 0.5:
            threshold = f(threshold * f(eta))
    return indices


@pytest.mark.parametrize("nms,eta,top_k,thr", [(0.45, 1.0, -1, -1.0), (0.9, 0.8, 150, 0.2), (0.3, 1.0, 50, 0.5)])
def test_nms_against_apply_nms_fast(nms, eta, top_k, thr):
    from netspec.layers.ssd import box_sizes, nms_fast
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 0.8, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(-0.02, 0.3, (300, 2)).astype(np.float32)], 1)  # some inverted
    scores = rng.uniform(0, 1, 300).astype(np.float32).round(2)  # many equal scores: the stable order matters
    got = nms_fast(boxes, box_sizes(boxes), scores, np.float32(thr), nms, eta, top_k)
    assert got == apply_nms_fast(boxes, scores, np.float32(thr), nms, eta, top_k)
    assert 10 < len(got) < 300


def test_detection_output_checks_its_bottoms():
    with pytest.raises(LayerError, match="locations"):
        build("DetectionOutput", "detection_output_param { num_classes: 3 }", (1, 8), (1, 9), (1, 2, 12))
    with pytest.raises(LayerError, match="confidences"):
        build("DetectionOutput", "detection_output_param { num_classes: 3 }", (1, 12), (1, 8), (1, 2, 12))
    with pytest.raises(LayerError, match="num_classes"):
        build("DetectionOutput", "", (1, 12), (1, 9), (1, 2, 12))


def test_save_output_param_parses_and_is_ignored(tmp_path):
    out = tmp_path / "results"
    m = build("DetectionOutput", 'detection_output_param { num_classes: 3 save_output_param { '
              f'output_directory: "{out}" output_name_prefix: "comp4_det_test_" output_format: "VOC" '
              'label_map_file: "labelmap_voc.prototxt" name_size_file: "test_name_size.txt" num_test_image: 4952 '
              'resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR } } }',
              (1, 12), (1, 9), (1, 2, 12))
    m(torch.zeros(1, 12), torch.full((1, 9), 0.5), torch.rand(1, 2, 12))
    assert not out.exists()


# -- OpenCV second opinion ------------------------------------------------------------------------------------

SMALL_SSD = """name: "small_ssd"
input: "data" input_shape { dim: 2 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "conv1_norm" type: "Normalize" bottom: "conv1" top: "conv1_norm"
  norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
layer { name: "conv2_norm" type: "Normalize" bottom: "conv2" top: "conv2_norm" norm_param { across_spatial: true } }
""" + "".join(f"""
layer {{ name: "{f}_loc" type: "Convolution" bottom: "{f}" top: "{f}_loc" convolution_param {{ num_output: {4 * n} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{f}_loc_perm" type: "Permute" bottom: "{f}_loc" top: "{f}_loc_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{f}_loc_flat" type: "Flatten" bottom: "{f}_loc_perm" top: "{f}_loc_flat" flatten_param {{ axis: 1 }} }}
layer {{ name: "{f}_conf" type: "Convolution" bottom: "{f}" top: "{f}_conf" convolution_param {{ num_output: {4 * n} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{f}_conf_perm" type: "Permute" bottom: "{f}_conf" top: "{f}_conf_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{f}_conf_flat" type: "Flatten" bottom: "{f}_conf_perm" top: "{f}_conf_flat" flatten_param {{ axis: 1 }} }}
layer {{ name: "{f}_priorbox" type: "PriorBox" bottom: "{f}" bottom: "data" top: "{f}_priorbox"
  prior_box_param {{ {pb} flip: true clip: {clip} variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}
""" for f, n, pb, clip in (("conv1_norm", 4, "min_size: 6 max_size: 14 aspect_ratio: 2 step: 2", "false"),
                           ("conv2_norm", 6, "min_size: 14 max_size: 25 aspect_ratio: 2 aspect_ratio: 3", "true"))) + """
layer { name: "mbox_loc" type: "Concat" bottom: "conv1_norm_loc_flat" bottom: "conv2_norm_loc_flat" top: "mbox_loc" concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "conv1_norm_conf_flat" bottom: "conv2_norm_conf_flat" top: "mbox_conf" concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "conv1_norm_priorbox" bottom: "conv2_norm_priorbox" top: "mbox_priorbox" concat_param { axis: 2 } }
layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" bottom: "mbox_priorbox"
  top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 4 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 50 confidence_threshold: 0.3 } }
"""


def random_weights(net, rng):
    """He-scaled weights, small biases; BatchNorm blobs as a trained net's (positive variance, factor 1)."""
    for name, blobs in net.params.items():
        for b in blobs:
            fan = max(1, b.data[0].size) if b.data.ndim > 1 else 1
            b.data[...] = rng.standard_normal(b.shape) * (np.sqrt(2.0 / fan) if b.data.ndim > 1 else 0.1)
        if net.layer_dict[name].type == "BatchNorm":
            blobs[1].data[...] = rng.uniform(0.5, 1.5, blobs[1].shape)
            blobs[2].data[...] = 1.0
        if net.layer_dict[name].type == "Normalize":
            blobs[0].data[...] = rng.uniform(1, 3, blobs[0].shape)  # unsaturated softmax: no tied scores


def by_label_then_score(det):
    """Detection rows without OpenCV's zero padding, in the fork's order (image, label, score descending):
    OpenCV sorts each image's rows by score only (equal scores: by box)."""
    det = det.reshape(-1, 7)
    det = det[(det != 0).any(1) & (det[:, 1] != -1)]  # OpenCV pads with zero rows; the fork's "none" row is -1
    return det[np.lexsort((det[:, 4], det[:, 3], -det[:, 2], det[:, 1], det[:, 0]))]


def opencv_agrees(proto_path, weights_path, net, x, names, cv_proto_path=None):
    """Max relative error of each named blob (and the detections) between netspec and OpenCV."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    cv = cv2.dnn.readNetFromCaffe(str(cv_proto_path or proto_path), str(weights_path))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)
    cv.setInput(x)
    theirs = dict(zip(names, cv.forward(names)))
    errors = {}
    for n in names:
        ours = net.blobs[n].data
        if n == "detection_out":
            a, b = by_label_then_score(ours), by_label_then_score(theirs[n])
            assert a.shape == b.shape, f"{n}: {a.shape} rows here, {b.shape} in OpenCV"
            if not a.size:
                errors[n] = 0.0
                continue
            # Equal scores are ranked in an order the fork leaves to std::sort (top_k and keep_top_k cuts, NMS
            # order), and netspec and OpenCV differ in the last bits of the scores: compare the rows scoring
            # above the lowest kept score and above every score that occurs twice in the confidences (random
            # weights can give flat confidences with many exact ties).
            conf = net.blobs["mbox_conf_flatten"].data.ravel()
            values, counts = np.unique(conf[conf >= a[:, 2].min()], return_counts=True)
            lo = max([min(a[:, 2].min(), b[:, 2].min())] + list(values[counts > 1])) + 1e-5
            ours, t = a[a[:, 2] > lo], b[b[:, 2] > lo]
            assert ours.shape == t.shape and len(ours), (len(a), ours.shape, t.shape)
        else:
            t = theirs[n].reshape(ours.shape)
        errors[n] = float(np.abs(ours - t).max() / max(1e-6, np.abs(ours).max()))
    return errors


def test_small_ssd_same_as_opencv(tmp_path):
    proto = tmp_path / "small_ssd.prototxt"
    proto.write_text(SMALL_SSD)
    net = Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(0)
    random_weights(net, rng)
    weights = tmp_path / "small_ssd.caffemodel"
    net.save(str(weights))
    again = Net(str(proto), netspec.TEST, weights=str(weights))  # the 0-axis shared scale blob round-trips
    assert again.params["conv2_norm"][0].shape == () and again.params["conv1_norm"][0].shape == (8,)
    for name in ("conv1_norm", "conv2_norm"):
        assert np.array_equal(again.params[name][0].data, net.params[name][0].data)
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    det = net.forward(data=x)["detection_out"]
    assert det.shape[2] > 5 and set(det[0, 0, :, 0]) == {0.0, 1.0}  # detections in both images
    assert net.blobs["mbox_priorbox"].shape == (1, 2, (16 * 16 * 4 + 8 * 8 * 6) * 4)
    errors = opencv_agrees(proto, weights, net, x, ["conv1_norm", "conv2_norm", "mbox_loc", "mbox_conf_flatten",
                                                    "mbox_priorbox", "detection_out"])
    assert max(errors.values()) <= 1e-4, errors


# -- export -----------------------------------------------------------------------------------------------------

def test_export_facts(tmp_path):
    """The heads export (PriorBox as a constant of the example size); DetectionOutput and a dynamic H x W are
    refused with the reason."""
    export = pytest.importorskip("netspec.interop.export")
    full = tmp_path / "small_ssd.prototxt"
    full.write_text(SMALL_SSD)
    with pytest.raises(export.ExportError, match="data-dependent output size"):
        export.check_exportable(Net(str(full), netspec.TEST).module)
    heads = tmp_path / "heads.prototxt"
    heads.write_text(SMALL_SSD[:SMALL_SSD.index('layer { name: "detection_out"')])
    net = Net(str(heads), netspec.TEST)
    _, notes = export.check_exportable(net.module)
    assert len(notes) == 2 and all("constant of the input size" in n for n in notes)
    with pytest.raises(export.ExportError, match="dynamic H x W"):
        export.check_exportable(net.module, dynamic_hw=True)


@pytest.mark.slow
def test_heads_export_to_onnx(tmp_path):
    """ONNX of the heads (Normalize, Permute, Flatten, PriorBox, Concat, Softmax) checked by the exporter;
    Normalize's eps must survive torch.onnx's optimizer (an all-zero position would give 0 / 0)."""
    export = pytest.importorskip("netspec.interop.export")
    pytest.importorskip("onnxruntime")
    heads = tmp_path / "heads.prototxt"
    heads.write_text(SMALL_SSD[:SMALL_SSD.index('layer { name: "detection_out"')])
    net = Net(str(heads), netspec.TEST)
    random_weights(net, np.random.default_rng(0))
    weights = tmp_path / "heads.caffemodel"
    net.save(str(weights))
    export.export(str(heads), weights=str(weights), onnx_path=str(tmp_path / "heads.onnx"))
    import onnxruntime as ort
    x = np.zeros((2, 3, 32, 32), np.float32)  # every position all-zero
    got = ort.InferenceSession(str(tmp_path / "heads.onnx")).run(["mbox_conf_flatten"], {"data": x})[0]
    np.testing.assert_allclose(got, net.forward(data=x)["mbox_conf_flatten"], rtol=1e-5, atol=1e-6)


# SSD's schema, as facts from weiliu89/caffe (branch ssd) src/caffe/proto/caffe.proto: message -> fields
# (name, number, repeated?, type) and enums; LayerParameter's numbers for the four layers.
SSD_FIELDS = {
    "NormalizeParameter": [("across_spatial", 1, False, "bool"), ("scale_filler", 2, False, "FillerParameter"),
                           ("channel_shared", 3, False, "bool"), ("eps", 4, False, "float")],
    "PermuteParameter": [("order", 1, True, "uint32")],
    "PriorBoxParameter": [("min_size", 1, True, "float"), ("max_size", 2, True, "float"),
                          ("aspect_ratio", 3, True, "float"), ("flip", 4, False, "bool"), ("clip", 5, False, "bool"),
                          ("variance", 6, True, "float"), ("img_size", 7, False, "uint32"),
                          ("img_h", 8, False, "uint32"), ("img_w", 9, False, "uint32"), ("step", 10, False, "float"),
                          ("step_h", 11, False, "float"), ("step_w", 12, False, "float"),
                          ("offset", 13, False, "float")],
    "NonMaximumSuppressionParameter": [("nms_threshold", 1, False, "float"), ("top_k", 2, False, "int32"),
                                       ("eta", 3, False, "float")],
    "SaveOutputParameter": [("output_directory", 1, False, "string"), ("output_name_prefix", 2, False, "string"),
                            ("output_format", 3, False, "string"), ("label_map_file", 4, False, "string"),
                            ("name_size_file", 5, False, "string"), ("num_test_image", 6, False, "uint32"),
                            ("resize_param", 7, False, "ResizeParameter")],
    "ResizeParameter": [("prob", 1, False, "float"), ("resize_mode", 2, False, "Resize_mode"),
                        ("height", 3, False, "uint32"), ("width", 4, False, "uint32"),
                        ("height_scale", 8, False, "uint32"), ("width_scale", 9, False, "uint32"),
                        ("pad_mode", 5, False, "Pad_mode"), ("pad_value", 6, True, "float"),
                        ("interp_mode", 7, True, "Interp_mode")],
    "DetectionOutputParameter": [("num_classes", 1, False, "uint32"), ("share_location", 2, False, "bool"),
                                 ("background_label_id", 3, False, "int32"),
                                 ("nms_param", 4, False, "NonMaximumSuppressionParameter"),
                                 ("save_output_param", 5, False, "SaveOutputParameter"),
                                 ("code_type", 6, False, "CodeType"), ("keep_top_k", 7, False, "int32"),
                                 ("variance_encoded_in_target", 8, False, "bool"),
                                 ("confidence_threshold", 9, False, "float"), ("visualize", 10, False, "bool"),
                                 ("visualize_threshold", 11, False, "float"), ("save_file", 12, False, "string")],
}
SSD_ENUMS = {("PriorBoxParameter", "CodeType"): {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3},
             ("ResizeParameter", "Resize_mode"): {"WARP": 1, "FIT_SMALL_SIZE": 2, "FIT_LARGE_SIZE_AND_PAD": 3},
             ("ResizeParameter", "Pad_mode"): {"CONSTANT": 1, "MIRRORED": 2, "REPEAT_NEAREST": 3},
             ("ResizeParameter", "Interp_mode"): {"LINEAR": 1, "AREA": 2, "NEAREST": 3, "CUBIC": 4, "LANCZOS4": 5}}
SSD_LAYER_FIELDS = {"permute_param": 202, "prior_box_param": 203, "detection_output_param": 204, "norm_param": 206}


def test_binary_compatible_with_the_fork_schema():
    """Every SSD field netspec adds has the fork's number, label, type and enum values, so the fork's binary
    files (a caffemodel keeps its layers' parameters) decode as the fork wrote them."""
    from google.protobuf.descriptor import FieldDescriptor as FD
    scalar = {FD.TYPE_BOOL: "bool", FD.TYPE_FLOAT: "float", FD.TYPE_UINT32: "uint32", FD.TYPE_INT32: "int32",
              FD.TYPE_STRING: "string"}
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {k: layer[k].number for k in SSD_LAYER_FIELDS} == SSD_LAYER_FIELDS
    for message, fields in SSD_FIELDS.items():
        desc = getattr(caffe_pb2, message).DESCRIPTOR
        for name, number, repeated, kind in fields:
            f = desc.fields_by_name[name]
            got = (f.message_type or f.enum_type).name if f.message_type or f.enum_type else scalar[f.type]
            assert (f.number, f.is_repeated, got) == (number, repeated, kind), f"{message}.{name}"
    for (message, enum), values in SSD_ENUMS.items():
        e = getattr(caffe_pb2, message).DESCRIPTOR.enum_types_by_name[enum]
        assert {v.name: v.number for v in e.values} == values, f"{message}.{enum}"
    # and a net with every field survives the wire format both ways
    text = SMALL_SSD.replace("top_k: 100 }", "top_k: 100 eta: 0.9 } variance_encoded_in_target: true "
                             "save_output_param { output_directory: 'o' num_test_image: 3 resize_param { prob: 0.5 "
                             "resize_mode: FIT_SMALL_SIZE pad_mode: MIRRORED interp_mode: CUBIC } }")
    ours = text_format.Parse(text, caffe_pb2.NetParameter())
    assert caffe_pb2.NetParameter.FromString(ours.SerializeToString()) == ours


@pytest.mark.slow
def test_detection_output_under_torch_compile():
    """The numpy part runs eagerly (a graph break), not the (1, 1, 1, 7) shape-inference placeholder; ~2 s of
    torch.compile start-up."""
    want = detect("nms_param { nms_threshold: 0.45 }")
    prior = torch.tensor([list(np.ravel((A, B, C))), [0.1, 0.1, 0.2, 0.2] * 3], dtype=torch.float32)[None]
    m = build("DetectionOutput", "detection_output_param { num_classes: 3 nms_param { nms_threshold: 0.45 } }",
              (1, 12), (1, 9), (1, 2, 12))
    got = torch.compile(m)(torch.zeros(1, 12), torch.tensor(SCORES).reshape(1, -1), prior)
    assert torch.equal(got, want)
