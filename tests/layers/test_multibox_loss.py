"""SSD's MultiBoxLoss and DetectionEvaluate (weiliu89/caffe branch ssd) against hand-derived values from the
fork's formulas (multibox_loss_layer.cpp, detection_evaluate_layer.cpp, bbox_util.cpp) and a line-by-line
transcription of its MatchBBox."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.formats import prototxt
from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.layers.multibox_loss import encode_boxes, match_bbox
from netspec.layers.ssd import decode_boxes
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS
from netspec.solver.solvers import Solver

MB = caffe_pb2.MultiBoxLossParameter
CT = caffe_pb2.PriorBoxParameter
VAR = [0.1, 0.1, 0.2, 0.2]
# four priors tiling the unit square, 2 x 2
PRIORS = np.array([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]], np.float32)


def prior_blob(priors=PRIORS, var=VAR):
    return torch.tensor(np.stack([priors.reshape(-1), np.tile(np.float32(var), len(priors))])[None])


def gt_blob(rows):
    """rows: (item, label, xmin, ymin, xmax, ymax[, difficult]) -> the fork's (1, 1, G, 8) label blob."""
    out = [[r[0], r[1], 0, *r[2:6], r[6] if len(r) > 6 else 0] for r in rows]
    return torch.tensor(out, dtype=torch.float32).reshape(1, 1, -1, 8)


def build(type_name, param, shapes, propagate_down=()):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    prop = " ".join(f"propagate_down: {str(p).lower()}" for p in propagate_down)
    lp = text_format.Parse(f'name: "l" type: "{type_name}" {bottoms} top: "y" {prop} {param}',
                           caffe_pb2.LayerParameter())
    return LAYERS.get(type_name).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TRAIN))


def mbox(param, num=1, P=4, C=3, G=1, L=1, **kw):
    return build("MultiBoxLoss", f"multibox_loss_param {{ num_classes: {C} {param} }}",
                 [(num, P * L * 4), (num, P * C), (1, 2, P * 4), (1, 1, G, 8)], **kw)


def smooth_l1(d):
    return sum(0.5 * x * x if abs(x) < 1 else abs(x) - 0.5 for x in d)


def nll(logits, k):
    return -(logits[k] - math.log(sum(math.exp(v) for v in logits)))


# -- the hand case -------------------------------------------------------------------------------------------

# gt (label 1) = (0.1, 0.1, 0.5, 0.5): overlaps prior 0 by 0.16 / 0.25 = 0.64, touches the others (overlap 0)
GT = gt_blob([(0, 1, .1, .1, .5, .5)])
LOC = torch.tensor([[.5, 1.5, -1., 0.] + [0.] * 12])
CONF_ROWS = [[0., 2., 0.], [3., 0., 0.], [0., 1., 1.], [0., 2., 0.]]  # background losses: p3 > p2 > p1
CONF = torch.tensor([sum(CONF_ROWS, [])])
# CENTER_SIZE target for prior 0: centre (0.25, 0.25), size 0.5; gt centre (0.3, 0.3), size 0.4
TARGET = [0.05 / 0.5 / 0.1, 0.05 / 0.5 / 0.1, math.log(0.8) / 0.2, math.log(0.8) / 0.2]


def test_hand_case_matches_mines_and_loss():
    m = mbox("code_type: CENTER_SIZE neg_pos_ratio: 2")
    loc, conf = LOC.clone().requires_grad_(), CONF.clone().requires_grad_()
    loss = m(loc, conf, prior_blob(), GT)
    plan = m.last_plan
    assert list(plan.match_indices[0][-1]) == [0, -1, -1, -1]
    assert plan.num_matches == 1 and plan.neg_indices == [[2, 3]]  # int(1 * 2) = 2 of the 3 negatives, by loss
    np.testing.assert_allclose(np.asarray(plan.loc_target), [TARGET], rtol=1e-5)
    d = [p - t for p, t in zip([.5, 1.5, -1., 0.], TARGET)]
    want = smooth_l1(d) + nll(CONF_ROWS[0], 1) + nll(CONF_ROWS[2], 0) + nll(CONF_ROWS[3], 0)  # / 1 match
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    # the fork's Backward: SmoothL1' on the matched prior's 4 values, zero elsewhere
    g = np.zeros(16)
    g[:4] = [x if abs(x) < 1 else math.copysign(1, x) for x in d]
    np.testing.assert_allclose(loc.grad.numpy()[0], g, rtol=1e-5, atol=1e-7)
    gc = np.zeros((4, 3))
    for j, k in ((0, 1), (2, 0), (3, 0)):  # softmax - onehot on the selected rows
        e = np.exp(CONF_ROWS[j])
        gc[j] = e / e.sum()
        gc[j, k] -= 1
    np.testing.assert_allclose(conf.grad.numpy().reshape(4, 3), gc, rtol=1e-5, atol=1e-7)


def test_hand_case_normalization_loc_weight_and_propagate_down():
    args = (LOC, CONF, prior_blob(), GT)
    d = [p - t for p, t in zip([.5, 1.5, -1., 0.], TARGET)]
    conf_all = nll(CONF_ROWS[0], 1) + sum(nll(CONF_ROWS[j], 0) for j in (1, 2, 3))
    # mining NONE: every prior in the confidence loss; FULL normalization: num * P = 4
    m = mbox("code_type: CENTER_SIZE mining_type: NONE loc_weight: 2")
    assert m(*args).item() == pytest.approx(2 * smooth_l1(d) + conf_all, rel=1e-5)
    m = build("MultiBoxLoss", "multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE mining_type: NONE } "
                              "loss_param { normalization: FULL }", [(1, 16), (1, 12), (1, 2, 16), (1, 1, 1, 8)])
    assert m(*args).item() == pytest.approx((smooth_l1(d) + conf_all) / 4, rel=1e-5)
    # propagate_down false for the locations: the fork leaves the location term out of the value
    m = mbox("code_type: CENTER_SIZE mining_type: NONE", propagate_down=(False, True, False, False))
    assert m(*args).item() == pytest.approx(conf_all, rel=1e-5)


def test_no_ground_truth_gives_zero_loss():
    m = mbox("code_type: CENTER_SIZE")
    loc, conf = LOC.clone().requires_grad_(), CONF.clone().requires_grad_()
    loss = m(loc, conf, prior_blob(), gt_blob([(-1, 1, 0, 0, 0, 0)]))
    assert loss.item() == 0
    loss.backward()
    assert not loc.grad.any() and not conf.grad.any()


def test_difficult_and_background_ground_truth():
    conf = CONF
    m = mbox("code_type: CENTER_SIZE use_difficult_gt: false")
    assert m(LOC, conf, prior_blob(), gt_blob([(0, 1, .1, .1, .5, .5, 1)])).item() == 0  # dropped: no match
    with pytest.raises(LayerError, match="background label"):
        m(LOC, conf, prior_blob(), gt_blob([(0, 0, .1, .1, .5, .5)]))


def test_logistic_conf_loss_by_hand():
    m = mbox("code_type: CENTER_SIZE conf_loss_type: LOGISTIC neg_pos_ratio: 1 loc_loss_type: L2")
    loss = m(LOC, CONF, prior_blob(), GT)

    def bce(x, t):
        return sum(max(v, 0) - v * tt + math.log1p(math.exp(-abs(v))) for v, tt in zip(x, t))
    # LOGISTIC mining scores: the background target of p1, p2, p3 -> p3 has the largest loss (one negative)
    d = [p - t for p, t in zip([.5, 1.5, -1., 0.], TARGET)]
    want = sum(0.5 * x * x for x in d) + bce(CONF_ROWS[0], [0, 1, 0]) + bce(CONF_ROWS[3], [1, 0, 0])
    assert m.last_plan.neg_indices == [[3]]
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_hard_example_mining_by_hand():
    """HARD_EXAMPLE ranks every prior by confidence + location loss and keeps sample_size of them; a positive
    not kept leaves both losses. Per-prior losses here: p0 (matched) nll(row0, 1) + SmoothL1 = 1.11,
    p1 0.095, p2 1.862, p3 2.239 (background targets)."""
    d = [p - t for p, t in zip([.5, 1.5, -1., 0.], TARGET)]
    m = mbox("code_type: CENTER_SIZE mining_type: HARD_EXAMPLE sample_size: 2")
    loss = m(LOC, CONF, prior_blob(), GT)
    assert m.last_plan.num_matches == 0 and m.last_plan.neg_indices == [[2, 3]]
    assert loss.item() == pytest.approx(nll(CONF_ROWS[2], 0) + nll(CONF_ROWS[3], 0), rel=1e-5)  # / max(1, 0)
    m = mbox("code_type: CENTER_SIZE mining_type: HARD_EXAMPLE sample_size: 3")
    loss = m(LOC, CONF, prior_blob(), GT)
    assert m.last_plan.num_matches == 1 and m.last_plan.neg_indices == [[2, 3]]
    want = smooth_l1(d) + nll(CONF_ROWS[0], 1) + nll(CONF_ROWS[2], 0) + nll(CONF_ROWS[3], 0)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_bp_inside_zeroes_the_gradient_of_corners_outside():
    priors = PRIORS.copy()
    priors[0] = (-.1, 0, .4, .5)  # gt (0, 0, .4, .5) overlaps it by 0.2 / 0.25
    m = mbox("code_type: CORNER bp_inside: true mining_type: NONE")
    loc = LOC.clone().requires_grad_()
    m(loc, CONF, prior_blob(priors), gt_blob([(0, 1, 0, 0, .4, .5)])).backward()
    d = [.5 - .1 / .1, 1.5 - 0, -1. - 0, 0. - 0]  # CORNER targets: (gt - prior) / variance
    want = [0] + [x if abs(x) < 1 else math.copysign(1, x) for x in d[1:]]  # xmin -0.1 is outside: no gradient
    np.testing.assert_allclose(loc.grad.numpy()[0, :4], want, rtol=1e-5, atol=1e-7)


# -- encodings -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code,in_target,want", [
    (CT.CORNER, False, [(.1 - 0) / .1, (.1 - 0) / .1, (.5 - .5) / .2, (.5 - .5) / .2]),
    (CT.CORNER, True, [.1, .1, 0, 0]),
    (CT.CORNER_SIZE, False, [.1 / .5 / .1, .1 / .5 / .1, 0, 0]),
    (CT.CENTER_SIZE, False, TARGET),
    (CT.CENTER_SIZE, True, [.1, .1, math.log(.8), math.log(.8)]),
])
def test_encode_bbox_by_hand_and_decode_round_trip(code, in_target, want):
    gt = np.array([[.1, .1, .5, .5]], np.float32)
    enc = encode_boxes(PRIORS[:1], np.float32([VAR]), gt, code, in_target)
    np.testing.assert_allclose(enc[0], want, rtol=1e-5, atol=1e-6)
    dec = decode_boxes(PRIORS[:1], np.float32([VAR]), enc, code, in_target)
    np.testing.assert_allclose(dec, gt, atol=1e-6)


def test_encode_variance_in_target_gradient_is_copied_back_undivided():
    """EncodeLocPrediction divides prediction and target by the variance; Backward copies the SmoothL1
    gradient of the divided values back as is (no 1 / variance factor)."""
    m = mbox("code_type: CENTER_SIZE encode_variance_in_target: true mining_type: NONE")
    loc = LOC.clone().requires_grad_()
    loss = m(loc, CONF, prior_blob(), GT)
    d = [p / v - t / v for p, t, v in zip([.5, 1.5, -1., 0.], [.1, .1, math.log(.8), math.log(.8)], VAR)]
    loss.backward()
    np.testing.assert_allclose(loc.grad.numpy()[0, :4], [x if abs(x) < 1 else math.copysign(1, x) for x in d],
                               rtol=1e-5)


# -- MatchBBox against a transcription -----------------------------------------------------------------------

def fork_match_bbox(gt, gt_labels, pred, label, match_type, thr, ignore_cross):
    """bbox_util.cpp MatchBBox, loop by loop (std::map iteration = ascending keys)."""
    def size(b):
        return 0.0 if b[2] < b[0] or b[3] < b[1] else np.float32(b[2] - b[0]) * np.float32(b[3] - b[1])

    def jaccard(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return np.float32(0)
        iw = np.float32(min(a[2], b[2]) - max(a[0], b[0]))
        ih = np.float32(min(a[3], b[3]) - max(a[1], b[1]))
        if iw > 0 and ih > 0:
            inter = np.float32(iw * ih)
            return np.float32(inter / np.float32(np.float32(size(a)) + np.float32(size(b)) - inter))
        return np.float32(0)
    n = len(pred)
    idx, ovl = [-1] * n, [np.float32(0)] * n
    gt_indices = [i for i in range(len(gt)) if label == -1 or gt_labels[i] == label]
    if not gt_indices:
        return idx, ovl
    overlaps = {}
    for i in range(n):
        if ignore_cross and any(v < 0 or v > 1 for v in pred[i]):
            idx[i] = -2
            continue
        for j in range(len(gt_indices)):
            o = jaccard(pred[i], gt[gt_indices[j]])
            if o > 1e-6:
                ovl[i] = max(ovl[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gt_indices)))
    while pool:
        max_idx, max_gt, max_o = -1, -1, -1
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > max_o:
                    max_idx, max_gt, max_o = i, j, overlaps[i][j]
        if max_idx == -1:
            break
        idx[max_idx], ovl[max_idx] = gt_indices[max_gt], max_o
        pool.remove(max_gt)
    if match_type == MB.PER_PREDICTION:
        for i in sorted(overlaps):
            if idx[i] != -1:
                continue
            mg, mo = -1, -1
            for j in range(len(gt_indices)):
                if j in overlaps[i] and overlaps[i][j] >= thr and overlaps[i][j] > mo:
                    mg, mo = j, overlaps[i][j]
            if mg != -1:
                idx[i], ovl[i] = gt_indices[mg], mo
    return idx, ovl


def random_boxes(rng, n, lo=-0.1, hi=1.1):
    c = rng.uniform(lo, hi, (n, 2))
    s = rng.uniform(0.05, 0.6, (n, 2))
    return np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_match_bbox_against_the_fork_transcription(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_boxes(rng, 5), random_boxes(rng, 40)
    pred[7] = pred[3]  # exact ties
    labels = rng.integers(1, 3, 5)
    for match_type in (MB.BIPARTITE, MB.PER_PREDICTION):
        for label in (-1, 1):
            for ignore in (False, True):
                idx, ovl = match_bbox(gt, labels, pred, label, match_type, 0.3, ignore)
                ridx, rovl = fork_match_bbox(gt, labels, pred, label, match_type, 0.3, ignore)
                assert list(idx) == ridx
                np.testing.assert_allclose(ovl, np.float32(rovl), rtol=1e-6)


# -- the whole Forward_cpu against a loop transcription (random boxes, two images) ---------------------------

def fork_forward(loc, conf, priors, var, gt_rows, C, thr, ratio, neg_overlap):
    """MultiBoxLossLayer::Forward_cpu with share_location, use_prior_for_matching, PER_PREDICTION,
    MAX_NEGATIVE, CENTER_SIZE, SMOOTH_L1, SOFTMAX, VALID, written loop by loop from bbox_util.cpp."""
    num, P = loc.shape[0], len(priors)
    gts = {}
    for r in gt_rows:
        if int(r[0]) != -1:
            gts.setdefault(int(r[0]), []).append((int(r[1]), [float(v) for v in r[3:7]]))
    loc_l, conf_l, n_match = 0.0, 0.0, 0
    for i in range(num):
        if i not in gts:
            continue
        boxes = np.float32([b for _, b in gts[i]])
        labels = [lab for lab, _ in gts[i]]
        idx, ovl = fork_match_bbox(boxes, labels, priors, -1, MB.PER_PREDICTION, thr, False)
        c = conf[i].reshape(P, C)
        tgt = [labels[g] if g > -1 else 0 for g in idx]
        closs = [nll(list(c[j]), tgt[j]) for j in range(P)]
        pos = [j for j in range(P) if idx[j] > -1]
        n_match += len(pos)
        elig = [(closs[j], j) for j in range(P) if idx[j] == -1 and ovl[j] < neg_overlap]
        elig.sort(key=lambda t: -t[0])
        negs = [j for _, j in elig[:min(int(len(pos) * np.float32(ratio)), len(elig))]]
        for j in pos:
            pr, b = priors[j], boxes[idx[j]]
            pw, ph = pr[2] - pr[0], pr[3] - pr[1]
            t = [((b[0] + b[2]) / 2 - (pr[0] + pr[2]) / 2) / pw / var[0],
                 ((b[1] + b[3]) / 2 - (pr[1] + pr[3]) / 2) / ph / var[1],
                 math.log((b[2] - b[0]) / pw) / var[2], math.log((b[3] - b[1]) / ph) / var[3]]
            loc_l += smooth_l1([loc[i, j * 4 + k] - t[k] for k in range(4)])
            conf_l += closs[j]
        conf_l += sum(closs[j] for j in negs)
    return (loc_l + conf_l) / max(1, n_match)


@pytest.mark.parametrize("seed", range(4))
def test_forward_against_the_fork_transcription(seed):
    rng = np.random.default_rng(seed)
    P, C, num = 30, 4, 2
    priors = random_boxes(rng, P, 0.1, 0.9)
    rows = [(i, int(rng.integers(1, C)), *random_boxes(rng, 1, 0.2, 0.8)[0]) for i in (0, 0, 0, 1)]
    gt = gt_blob(rows)
    loc = rng.uniform(-1.5, 1.5, (num, P * 4)).astype(np.float32)
    conf = rng.standard_normal((num, P * C)).astype(np.float32)
    m = mbox("code_type: CENTER_SIZE overlap_threshold: 0.4 neg_pos_ratio: 2.5 neg_overlap: 0.3",
             num=num, P=P, C=C, G=len(rows))
    got = m(torch.tensor(loc), torch.tensor(conf), prior_blob(priors), gt).item()
    want = fork_forward(loc.astype(np.float64), conf.astype(np.float64), priors, VAR, gt.numpy().reshape(-1, 8),
                        C, 0.4, 2.5, 0.3)
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = mbox("code_type: CENTER_SIZE neg_pos_ratio: 2")
    loc, conf = LOC.cuda().requires_grad_(), CONF.cuda().requires_grad_()
    loss = m(loc, conf, prior_blob().cuda(), GT.cuda())
    loss.backward()
    loc0, conf0 = LOC.clone().requires_grad_(), CONF.clone().requires_grad_()
    ref = m(loc0, conf0, prior_blob(), GT)
    ref.backward()
    assert loss.device.type == "cuda" and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(conf.grad.cpu().numpy(), conf0.grad.numpy(), rtol=1e-5, atol=1e-7)


# -- gradients -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("param", ["code_type: CENTER_SIZE overlap_threshold: 0.3",
                                   "code_type: CORNER mining_type: NONE loc_loss_type: L2",
                                   "code_type: CENTER_SIZE conf_loss_type: LOGISTIC mining_type: HARD_EXAMPLE "
                                   "sample_size: 6"])
def test_gradcheck_float64(param):
    rng = np.random.default_rng(1)
    P, C, num = 8, 3, 2
    priors = random_boxes(rng, P, 0.05, 0.95)
    gt = gt_blob([(0, 1, .1, .1, .5, .6), (0, 2, .4, .3, .9, .8), (1, 1, .2, .2, .7, .9)])
    m = mbox(param, num=num, P=P, C=C, G=3)
    loc = torch.tensor(rng.uniform(-.4, .4, (num, P * 4)), dtype=torch.float64, requires_grad=True)
    conf = torch.tensor(rng.standard_normal((num, P * C)), dtype=torch.float64, requires_grad=True)
    pb = prior_blob(priors)
    assert m(loc, conf, pb, gt).item() > 0
    assert torch.autograd.gradcheck(lambda a, b: m(a, b, pb, gt), (loc, conf), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


# -- DetectionEvaluate ---------------------------------------------------------------------------------------

def test_detection_evaluate_rows_by_hand():
    det = torch.tensor([
        [0, 1, .9, .1, .1, .5, .5],    # best gt 0 (IoU 1): true positive
        [0, 1, .95, .12, .1, .5, .5],  # higher score, so evaluated first: takes gt 0
        [0, 1, .3, .6, .6, .9, .9],    # matches the difficult gt 1: (0, 0) with evaluate_difficult_gt false
        [0, 2, .8, 0, 0, .2, .2],      # no gt of label 2 in image 0: false positive
        [1, 1, .7, .0, .0, .1, .1],    # image 1 has no gt: false positive
        [2, -1, -1, -1, -1, -1, -1],   # DetectionOutput's empty row: not counted
    ], dtype=torch.float32).reshape(1, 1, -1, 7)
    gt = gt_blob([(0, 1, .1, .1, .5, .5), (0, 1, .6, .6, .9, .9, 1), (3, 2, 0, 0, 1, 1)])
    m = build("DetectionEvaluate", "detection_evaluate_param { num_classes: 3 evaluate_difficult_gt: false }",
              [(1, 1, 6, 7), (1, 1, 3, 8)])
    out = m(det, gt).numpy().reshape(-1, 5)
    want = [[-1, 1, 1, -1, -1], [-1, 2, 1, -1, -1],   # positives per class (the difficult box not counted)
            [0, 1, .95, 1, 0], [0, 1, .9, 0, 1], [0, 1, .3, 0, 0],
            [0, 2, .8, 0, 1],
            [1, 1, .7, 0, 1]]
    np.testing.assert_allclose(out, np.float32(want), rtol=1e-6)
    m = build("DetectionEvaluate", "detection_evaluate_param { num_classes: 3 }", [(1, 1, 6, 7), (1, 1, 3, 8)])
    out = m(det, gt).numpy().reshape(-1, 5)
    assert out[1, 2] == 1 and out[0, 2] == 2 and list(out[4, 3:]) == [1, 0]  # the difficult box counts


def test_detection_evaluate_in_pixels_with_name_size_file(tmp_path):
    f = tmp_path / "sizes.txt"
    f.write_text("a 10 20\n")
    det = torch.tensor([[0, 1, .9, 0, 0, .5, .5]]).reshape(1, 1, 1, 7)
    gt = gt_blob([(0, 1, 0, 0, .5, 1)])
    m = build("DetectionEvaluate", f'detection_evaluate_param {{ num_classes: 2 name_size_file: "{f}" }}',
              [(1, 1, 1, 7), (1, 1, 1, 8)])
    out = m(det, gt).numpy().reshape(-1, 5)
    # pixels: det (0, 0, 10, 5), gt (0, 0, 10, 10): sizes 11 * 6 = 66 and 11 * 11 = 121, IoU 66 / 121 > 0.5
    assert list(out[1, 3:]) == [1, 0]
    assert 66 / 121 >= 0.5
    m2 = build("DetectionEvaluate", "detection_evaluate_param { num_classes: 2 }", [(1, 1, 1, 7), (1, 1, 1, 8)])
    assert list(m2(det, gt).numpy().reshape(-1, 5)[1, 3:]) == [1, 0]  # normalized: exactly 0.5 >= 0.5


def test_refusals():
    with pytest.raises(LayerError, match="num_classes"):
        build("MultiBoxLoss", "", [(1, 16), (1, 12), (1, 2, 16), (1, 1, 1, 8)])
    with pytest.raises(LayerError, match="share_location"):
        mbox("share_location: false", L=3)
    with pytest.raises(LayerError, match="location"):
        mbox("", P=4, L=2)
    with pytest.raises(LayerError, match="outside"):
        mbox("code_type: CENTER_SIZE")(LOC, CONF, prior_blob(), gt_blob([(0, 3, .1, .1, .5, .5)]))
    ev = build("DetectionEvaluate", "detection_evaluate_param { num_classes: 3 }", [(1, 1, 1, 7), (1, 1, 1, 8)])
    with pytest.raises(LayerError, match="background"):
        ev(torch.tensor([[[[0, 1, .9, .1, .1, .5, .5]]]]), gt_blob([(0, 0, .1, .1, .5, .5)]))


# -- a small SSD-like training net ---------------------------------------------------------------------------

TRAIN_NET = """
name: "tiny_ssd"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } shape { dim: 1 dim: 1 dim: 3 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "loc" type: "Convolution" bottom: "conv1" top: "loc"
        convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "mbox_loc" flatten_param { axis: 1 } }
layer { name: "conf" type: "Convolution" bottom: "conv1" top: "conf"
        convolution_param { num_output: 9 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "mbox_conf" flatten_param { axis: 1 } }
layer { name: "pb" type: "PriorBox" bottom: "conv1" bottom: "data" top: "mbox_priorbox"
        prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: false clip: true
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox"
        bottom: "label" top: "mbox_loss" include { phase: TRAIN }
        propagate_down: true propagate_down: true propagate_down: false propagate_down: false
        loss_param { normalization: VALID }
        multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 3
          share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
          background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
          ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
"""


def test_tiny_ssd_trains_three_steps():
    sp = prototxt.parse_solver('base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 10 display: 0 '
                               'snapshot_prefix: ""')
    sp.net_param.CopyFrom(prototxt.parse_net(TRAIN_NET))
    torch.manual_seed(0)
    s = Solver(sp, device="cpu")
    rng = np.random.RandomState(0)
    s.net.blobs["data"].data[...] = rng.randn(2, 3, 16, 16)
    s.net.blobs["label"].data[...] = gt_blob([(0, 1, .1, .1, .4, .5), (0, 2, .5, .5, .9, .8),
                                              (1, 2, .2, .3, .6, .6)]).numpy()
    losses = []
    for _ in range(3):
        s.step(1)
        losses.append(float(s.net.blobs["mbox_loss"].data))
    assert all(np.isfinite(losses)) and losses[0] > losses[1] > losses[2], losses


# -- the released SSD300 VGG16 train / test nets (ssd_pascal.py's files) on a synthetic AnnotatedDatum LMDB ---

SSD = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "forks" / "ssd"


def _released(name, tmp_path, size=268):
    """The released net with its AnnotatedData reading a 2-image synthetic LMDB at ``size`` (conv9_2 needs
    about 260), batch 1."""
    from netspec.data.annotated import write_annotated_lmdb
    rng = np.random.default_rng(0)
    items = [(rng.integers(0, 256, (60, 80, 3)).astype(np.uint8),
              [(3, .1, .2, .5, .7), (12, .4, .3, .9, .9), (5, .6, .1, .8, .3, 1)]) for _ in range(2)]
    write_annotated_lmdb(tmp_path / "db", items)
    path = SSD / name
    if not path.exists():
        pytest.skip(f"{path.name} is not in tests/data/forks/ssd")
    p = prototxt.parse_net(path.read_text())
    data = p.layer[0]
    data.data_param.source = str(tmp_path / "db")
    data.data_param.batch_size = 1
    data.transform_param.resize_param.height = data.transform_param.resize_param.width = size
    return p


@pytest.mark.slow
def test_released_ssd300_train_net_forward_backward(tmp_path):
    import netspec
    from netspec.net.pycaffe import Net
    p = _released("VGG_VOC0712_SSD_300x300_train.prototxt", tmp_path)
    torch.manual_seed(0)
    n = Net(p, netspec.TRAIN)
    loss = float(np.asarray(n.forward()["mbox_loss"]))
    assert np.isfinite(loss) and loss > 0
    n.backward()
    lab = n.blobs["label"].data.reshape(-1, 8)
    g_loc = n.blobs["mbox_loc"].diff.reshape(-1, 4)
    g_conf = n.blobs["mbox_conf"].diff.reshape(-1, 21)
    pos = np.abs(g_loc).sum(1) > 0
    sel = np.abs(g_conf).sum(1) > 0
    if (lab[:, 0] >= 0).any():  # boxes survived the sampler: positives and 3x as many mined negatives
        assert 0 < pos.sum() and sel.sum() <= 4 * pos.sum() and np.all(sel[pos])
    assert np.isfinite(n.blobs["conv1_1"].diff).all() and np.abs(n.params["conv1_1"][0].diff).sum() > 0


@pytest.mark.slow
def test_released_ssd300_test_net_detection_evaluate(tmp_path):
    import netspec
    from netspec.net.pycaffe import Net
    p = _released("VGG_VOC0712_SSD_300x300_test.prototxt", tmp_path)
    (tmp_path / "sizes.txt").write_text("a 60 80\nb 60 80\n")
    ev = [l for l in p.layer if l.type == "DetectionEvaluate"][0]
    ev.detection_evaluate_param.name_size_file = str(tmp_path / "sizes.txt")
    torch.manual_seed(0)
    n = Net(p, netspec.TEST)
    rows = n.forward()["detection_eval"].reshape(-1, 5)
    assert rows.shape[0] >= 20 and (rows[:20, 0] == -1).all() and list(rows[:20, 1]) == list(range(1, 21))
    assert rows[2, 2] == 1 and rows[11, 2] == 1 and rows[4, 2] == 0  # labels 3 and 12; label 5 is difficult
    det = rows[20:]
    assert ((det[:, 3] + det[:, 4]) <= 1).all()
