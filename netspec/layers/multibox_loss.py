"""SSD's training-side layers (weiliu89/caffe, branch ssd): MultiBoxLoss and DetectionEvaluate.

Followed: src/caffe/layers/multibox_loss_layer.cpp (LayerSetUp, Forward_cpu, Backward_cpu),
src/caffe/layers/detection_evaluate_layer.cpp (Reshape, Forward_cpu) and src/caffe/util/bbox_util.cpp
(GetGroundTruth, MatchBBox, FindMatches, EncodeBBox, EncodeLocPrediction, ComputeConfLoss, ComputeLocLoss,
MineHardExamples, EncodeConfPrediction, GetDetectionResults, OutputBBox). Parameters: ``multibox_loss_param``
(201) and ``detection_evaluate_param`` (205), the fork's numbers.

MultiBoxLoss: the matching and the mining are discrete; they run in numpy (float32, as the fork's float
boxes) on detached values. The losses on the selected entries are torch expressions, so autograd gives the
fork's Backward: loc_weight * SmoothL1'(d) (or d for L2) / normalizer on the matched locations,
(softmax - onehot) (or sigmoid - target) / normalizer on the selected confidences, zero elsewhere.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from ..errors import LayerError
from ..proto import caffe_pb2
from ..registry import Export, register
from .base import eager, example_net, fail, ident
from .loss import LOG_FLT_MIN, clamp_st, normalization
from .ssd import _overlap, box_sizes, decode_boxes

MB = caffe_pb2.MultiBoxLossParameter
CodeType = caffe_pb2.PriorBoxParameter
f32 = np.float32


# -- box helpers (bbox_util.cpp) ------------------------------------------------------------------------------

def ground_truth(gt, background, use_difficult, stop_at_minus_one=False):
    """GetGroundTruth over a (..., 8) label blob: {item_id: (labels int array, boxes (G, 4) f32, difficult)}.
    Rows with item_id -1 are skipped (the LabelBBox variant DetectionEvaluate uses stops at the first one);
    difficult rows are dropped unless ``use_difficult``. A background label raises ValueError."""
    rows = np.asarray(gt, f32).reshape(-1, 8)
    out = {}
    for r in rows:
        item = int(r[0])
        if item == -1:
            if stop_at_minus_one:
                break
            continue
        label = int(r[1])
        if label == background:
            raise ValueError(f"found background label {label} in the ground truth")
        difficult = bool(r[7])
        if difficult and not use_difficult:
            continue
        out.setdefault(item, []).append((label, r[3:7], difficult))
    return {k: (np.array([v[0] for v in vs], np.int64), np.array([v[1] for v in vs], f32).reshape(-1, 4),
                np.array([v[2] for v in vs], bool)) for k, vs in out.items()}


def cross_boundary(boxes):
    """IsCrossBoundaryBBox: a coordinate outside [0, 1]."""
    return ((boxes < 0) | (boxes > 1)).any(-1)


def overlaps(preds, gts):
    """JaccardOverlap (normalized) of every prediction with every ground truth box: (num_pred, num_gt) f32."""
    ps, gs = box_sizes(preds), box_sizes(gts)
    out = np.zeros((len(preds), len(gts)), f32)
    for j in range(len(gts)):
        out[:, j] = _overlap(gts[j], gs[j], preds, ps)
    return out


def match_bbox(gt_boxes, gt_labels, preds, label, match_type, overlap_threshold, ignore_cross_boundary):
    """MatchBBox: (match indices, match overlaps) per prediction. Indices are into all ground truth boxes;
    -1 = unmatched, -2 = ignored (cross boundary). ``label`` -1 matches against every box, else only boxes of
    that label. Bipartite first: the largest overlap (> 1e-6) among unmatched predictions and unused ground
    truth, first in (prediction, ground truth) order on ties, until none is left; then with PER_PREDICTION
    each unmatched prediction takes its best ground truth with overlap >= overlap_threshold."""
    n = len(preds)
    idx = np.full(n, -1, np.int64)
    ovl = np.zeros(n, f32)
    gt_idx = np.arange(len(gt_boxes)) if label == -1 else np.nonzero(gt_labels == label)[0]
    if not len(gt_idx):
        return idx, ovl
    ignored = cross_boundary(preds) if ignore_cross_boundary else np.zeros(n, bool)
    idx[ignored] = -2
    o = overlaps(preds, gt_boxes[gt_idx])
    o[ignored] = 0
    kept = o > f32(1e-6)  # the fork's overlap map holds only these pairs
    ovl = np.where(kept, o, f32(0)).max(1).astype(f32)
    cand = np.where(kept, o, -np.inf)
    for _ in range(len(gt_idx)):  # bipartite: one ground truth per round
        cand[idx != -1] = -np.inf
        k = int(np.argmax(cand))  # first maximum in row-major order, as the fork's strict ">" scan
        i, j = divmod(k, cand.shape[1])
        if cand[i, j] == -np.inf:
            break
        idx[i], ovl[i] = gt_idx[j], o[i, j]
        cand[:, j] = -np.inf
    if match_type == MB.PER_PREDICTION:
        best = np.where(kept & (o >= f32(overlap_threshold)), o, -np.inf)
        for i in np.nonzero((idx == -1) & kept.any(1))[0]:
            j = int(np.argmax(best[i]))
            if best[i, j] != -np.inf:
                idx[i], ovl[i] = gt_idx[j], o[i, j]
    return idx, ovl


def encode_boxes(prior, variance, boxes, code_type, encode_variance_in_target):
    """EncodeBBox over rows: prior, variance, boxes (M, 4) -> (M, 4) f32 targets. Raises ValueError for a
    non-positive prior size (CENTER_SIZE, CORNER_SIZE) or ground-truth size (CENTER_SIZE), as the fork's
    CHECKs."""
    prior, variance, boxes = (np.asarray(a, f32).reshape(-1, 4) for a in (prior, variance, boxes))
    v = np.ones_like(variance) if encode_variance_in_target else variance
    if code_type == CodeType.CORNER:
        return (boxes - prior) / v
    pw, ph = prior[:, 2] - prior[:, 0], prior[:, 3] - prior[:, 1]
    if (pw <= 0).any() or (ph <= 0).any():
        raise ValueError("a prior box has a non-positive width or height")
    if code_type == CodeType.CORNER_SIZE:
        return (boxes - prior) / np.stack([pw, ph, pw, ph], -1) / v
    if code_type != CodeType.CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if (bw <= 0).any() or (bh <= 0).any():
        raise ValueError("a ground-truth box has a non-positive width or height (CENTER_SIZE encoding)")
    pcx, pcy = (prior[:, 0] + prior[:, 2]) / f32(2), (prior[:, 1] + prior[:, 3]) / f32(2)
    bcx, bcy = (boxes[:, 0] + boxes[:, 2]) / f32(2), (boxes[:, 1] + boxes[:, 3]) / f32(2)
    return np.stack([(bcx - pcx) / pw / v[:, 0], (bcy - pcy) / ph / v[:, 1],
                     np.log(bw / pw) / v[:, 2], np.log(bh / ph) / v[:, 3]], -1).astype(f32)


# -- MultiBoxLoss ---------------------------------------------------------------------------------------------

class Plan:
    """The discrete part of one forward: which location entries and confidence rows enter the losses."""

    def __init__(self):
        self.loc_img, self.loc_prior, self.loc_class = [], [], []  # matched (positive) location entries
        self.loc_target, self.loc_var, self.loc_keep = [], [], []  # encoded targets; bp_inside masks
        self.conf_img, self.conf_prior, self.conf_label = [], [], []  # selected confidence rows (mining)
        self.num_matches = 0
        self.num_negs = 0
        self.gt_labels = {}  # per image with ground truth: its labels
        self.match_indices = []  # per image: {label: indices}, as the fork's all_match_indices_
        self.neg_indices = []


class MultiBoxLoss(nn.Module):
    """loss = loc_weight * L_loc / N + L_conf / N (each term only when propagate_down of its bottom, as the
    fork), N = GetNormalizer(normalization, num, num_priors, num_matches). Bottoms: loc (num, P*L*4), conf
    (num, P*C), priors (1, 2, P*4), ground truth (1, 1, G, 8)."""

    def __init__(self, name, p, norm, use_loc, use_conf):
        super().__init__()
        self.name, self.p, self.norm, self.use_loc, self.use_conf = name, p, norm, use_loc, use_conf
        self.C = p.num_classes
        self.L = 1 if p.share_location else self.C
        self.mining = p.mining_type != MB.NONE

    def top_shapes(self, bottom_shapes):
        return [()]

    # the discrete part: FindMatches, MineHardExamples, EncodeLocPrediction / EncodeConfPrediction
    def plan(self, loc, conf, prior, gt):
        """The fork's MultiBoxLossLayer::Forward up to the losses: FindMatches, the location targets
        (EncodeLocPrediction), MineHardExamples and the confidence targets (EncodeConfPrediction)."""
        p, C, L = self.p, self.C, self.L
        num = loc.shape[0]
        P = prior.shape[2] // 4
        pri = prior.reshape(-1)[:2 * P * 4].reshape(2, P, 4)
        pboxes, pvars = pri[0], pri[1]
        loc = loc.reshape(num, P, L, 4)
        conf = conf.reshape(num, P, C)
        try:
            all_gt = ground_truth(gt, p.background_label_id, p.use_difficult_gt)
        except ValueError as e:
            raise LayerError(f"{self.name}: {e}") from None
        if not p.map_object_to_agnostic or self.mining:  # the fork's CHECK_GE / CHECK_LT on the labels
            bad = [int(v) for labels, _, _ in all_gt.values() for v in labels if not 0 <= v < C]
            if bad:
                raise LayerError(f"{self.name}: ground-truth label {bad[0]} is outside [0, {C}) "
                                 f"(num_classes {C})")
        plan = Plan()
        matches, match_ovl = self._find_matches(all_gt, pboxes, pvars, loc)
        plan.num_matches = sum(int((v > -1).sum()) for mi in matches for v in mi.values())
        # encoded location targets of the matches (EncodeLocPrediction), in the fork's order
        loc_rows = []
        for i in range(num):
            for label in sorted(matches[i]):
                for j in np.nonzero(matches[i][label] > -1)[0]:
                    loc_rows.append((i, int(j), 0 if p.share_location else label, int(matches[i][label][j])))
        loc_loss_per_prior = np.zeros((num, P), f32)
        if loc_rows:
            self._encode_loc(plan, loc_rows, all_gt, pboxes, pvars, loc)
            if p.mining_type == MB.HARD_EXAMPLE:
                self._loc_loss_per_prior(plan, loc, loc_loss_per_prior)
        if self.mining:
            self._mine_hard_examples(plan, matches, match_ovl, all_gt, conf, loc_loss_per_prior, loc_rows)
            self._encode_conf(plan, matches, all_gt)
        plan.match_indices = matches
        plan.gt_labels = {i: v[0] for i, v in all_gt.items()}
        return plan

    def _find_matches(self, all_gt, pboxes, pvars, loc):
        """FindMatches: per image, {label (-1 when locations are shared): matched ground truth per prior or -1}
        and the overlaps."""
        p, C, L = self.p, self.C, self.L
        matches, match_ovl = [], []
        for i in range(loc.shape[0]):
            mi, mo = {}, {}
            if i in all_gt:
                labels, boxes, _ = all_gt[i]
                if p.use_prior_for_matching:
                    idx, ovl = match_bbox(boxes, labels, pboxes, -1, p.match_type, p.overlap_threshold,
                                          p.ignore_cross_boundary_bbox)
                    if p.share_location:
                        mi[-1], mo[-1] = idx, ovl
                    else:
                        for c in range(C):
                            if c == p.background_label_id:
                                continue
                            mi[c] = np.where((idx > -1) & (labels[np.maximum(idx, 0)] == c), idx, -1)
                            mo[c] = ovl
                else:
                    for c in range(L):
                        label = -1 if p.share_location else c
                        if not p.share_location and label == p.background_label_id:
                            continue
                        with np.errstate(all="ignore"):
                            dec = decode_boxes(pboxes, pvars, loc[i, :, c], p.code_type, p.encode_variance_in_target)
                        mi[label], mo[label] = match_bbox(boxes, labels, dec, label, p.match_type,
                                                          p.overlap_threshold, p.ignore_cross_boundary_bbox)
            matches.append(mi)
            match_ovl.append(mo)
        return matches, match_ovl

    def _loc_loss_per_prior(self, plan, loc, out):
        """ComputeLocLoss (HARD_EXAMPLE mining): each matched prior's location loss, into ``out[image, prior]``."""
        p = self.p
        pred = loc[plan.loc_img, plan.loc_prior, plan.loc_class]
        if p.encode_variance_in_target:
            pred = pred / np.asarray(plan.loc_var, f32)
        pred = np.where(np.asarray(plan.loc_keep), pred, np.asarray(plan.loc_target))
        d = pred - np.asarray(plan.loc_target, f32)
        ad = np.abs(d)
        per = (np.where(ad < 1, f32(0.5) * d * d, ad - f32(0.5)) if p.loc_loss_type == MB.SMOOTH_L1
               else f32(0.5) * d * d).sum(-1)
        out[plan.loc_img, plan.loc_prior] = per

    def _mine_hard_examples(self, plan, matches, match_ovl, all_gt, conf, loc_loss_per_prior, loc_rows):
        """MineHardExamples: the negatives of each image by loss (MAX_NEGATIVE: up to neg_pos_ratio per positive
        below neg_overlap; HARD_EXAMPLE: the sample_size hardest, positives not among them dropped)."""
        p = self.p
        num, P = loc_loss_per_prior.shape
        # ComputeConfLoss: each prior against its matched label, else background
        target = np.full((num, P), p.background_label_id, np.int64)
        for i in range(num):
            for label in sorted(matches[i]):
                idx = matches[i][label]
                hit = (idx > -1) & (target[i] == p.background_label_id)  # the first map entry wins
                if hit.any():
                    target[i, hit] = all_gt[i][0][idx[hit]]
        closs = self._conf_loss_np(conf, target)
        for i in range(num):
            loss = closs[i] + loc_loss_per_prior[i]
            neg = []
            for label in sorted(matches[i]):
                idx, ovl = matches[i][label], match_ovl[i][label]
                if p.mining_type == MB.MAX_NEGATIVE:
                    elig = (idx == -1) & (ovl < f32(p.neg_overlap))
                    num_sel = min(int(f32(int((idx > -1).sum())) * f32(p.neg_pos_ratio)), int(elig.sum()))
                else:
                    elig = np.ones(P, bool)
                    num_sel = min(p.sample_size, P)
                cand = np.nonzero(elig)[0]
                cand = cand[np.argsort(-loss[cand], kind="stable")][:num_sel]
                sel = np.zeros(P, bool)
                sel[cand] = True
                if p.mining_type == MB.HARD_EXAMPLE:
                    drop = (idx > -1) & ~sel
                    plan.num_matches -= int(drop.sum())
                    idx = idx.copy()
                    idx[drop] = -1
                    matches[i][label] = idx
                neg += [int(m) for m in np.nonzero((idx == -1) & sel)[0]]
            plan.neg_indices.append(neg)
            plan.num_negs += len(neg)
        if p.mining_type == MB.HARD_EXAMPLE:  # positives not selected leave the location loss too
            keep = [k for k, (i, j, c, _) in enumerate(loc_rows)
                    if matches[i][-1 if p.share_location else c][j] > -1]
            for name in ("loc_img", "loc_prior", "loc_class", "loc_target", "loc_var", "loc_keep"):
                setattr(plan, name, [getattr(plan, name)[k] for k in keep])

    def _encode_conf(self, plan, matches, all_gt):
        """EncodeConfPrediction: per image with ground truth, its positives then its negatives."""
        for i in range(len(matches)):
            if i not in all_gt:
                continue
            for label in sorted(matches[i]):
                idx = matches[i][label]
                for j in np.nonzero(idx > -1)[0]:
                    plan.conf_img.append(i)
                    plan.conf_prior.append(int(j))
                    plan.conf_label.append(self._gt_label(all_gt[i][0][idx[j]]))
            for j in plan.neg_indices[i]:
                plan.conf_img.append(i)
                plan.conf_prior.append(j)
                plan.conf_label.append(self.p.background_label_id)

    def _gt_label(self, label):
        return self.p.background_label_id + 1 if self.p.map_object_to_agnostic else int(label)

    def _encode_loc(self, plan, rows, all_gt, pboxes, pvars, loc):
        p = self.p
        ii = np.array([r[0] for r in rows])
        jj = np.array([r[1] for r in rows])
        cc = np.array([r[2] for r in rows])
        gt_boxes = np.stack([all_gt[i][1][g] for i, _, _, g in rows])
        try:
            target = encode_boxes(pboxes[jj], pvars[jj], gt_boxes, p.code_type, p.encode_variance_in_target)
        except ValueError as e:
            raise LayerError(f"{self.name}: {e}") from None
        keep = np.ones((len(rows), 4), bool)
        if p.bp_inside:  # a corner outside the image: the prediction takes the target's value (zero gradient)
            mb = pboxes[jj]
            if not p.use_prior_for_matching:
                with np.errstate(all="ignore"):
                    mb = np.stack([decode_boxes(pboxes[j:j + 1], pvars[j:j + 1], loc[i, j:j + 1, c], p.code_type,
                                                p.encode_variance_in_target)[0] for i, j, c in zip(ii, jj, cc)])
            keep = (mb >= 0) & (mb <= 1)
        var = pvars[jj] if p.encode_variance_in_target else np.ones((len(rows), 4), f32)
        if p.encode_variance_in_target:
            target = target / var
        plan.loc_img, plan.loc_prior, plan.loc_class = list(ii), list(jj), list(cc)
        plan.loc_target, plan.loc_var, plan.loc_keep = list(target), list(var), list(keep)

    def _conf_loss_np(self, conf, target):
        """ComputeConfLoss (with match labels): (num, P) per-prior losses for mining."""
        x = conf.astype(f32)
        if self.p.conf_loss_type == MB.SOFTMAX:
            m = x.max(-1, keepdims=True)
            e = np.exp(x - m)
            prob = np.take_along_axis(e, target[..., None], -1)[..., 0] / e.sum(-1)
            return -np.log(np.maximum(prob, np.finfo(f32).tiny))
        t = (np.arange(self.C) == target[..., None]).astype(f32)
        pos = (x >= 0).astype(f32)
        return -(x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))).sum(-1)

    def forward(self, loc, conf, prior, label):
        if isinstance(loc, FakeTensor) or loc.device.type == "meta":  # shape inference
            return loc.new_zeros(())
        return self._run(loc, conf, prior, label)

    @eager  # data-dependent selection in numpy: torch.compile runs it eagerly
    def _run(self, loc, conf, prior, label):
        if loc.dtype in (torch.float16, torch.bfloat16):
            loc, conf = loc.float(), conf.float()
        with torch.autocast(loc.device.type, enabled=False):
            arrays = [t.detach().to("cpu", torch.float32).numpy() for t in (loc, conf, prior, label)]
            plan = self.plan(*arrays)
            self.last_plan = plan
            return self._loss(plan, loc, conf)

    def _loss(self, plan, loc, conf):
        p, C, L = self.p, self.C, self.L
        num = loc.shape[0]
        P = conf.shape[1] // C
        dev, dt = loc.device, loc.dtype
        nz = max(1, plan.num_matches) if self.norm == "VALID" else (
            max(1, num * P) if self.norm == "FULL" else max(1, num) if self.norm == "BATCH_SIZE" else 1)
        total = loc.reshape(-1)[:0].sum() + conf.reshape(-1)[:0].sum()  # 0, connected: zero gradients
        if self.use_loc and plan.num_matches >= 1:
            lt = lambda a, d=dt: torch.as_tensor(np.asarray(a), device=dev, dtype=d)  # noqa: E731
            pred = loc.reshape(num, P, L, 4)[lt(plan.loc_img, torch.long), lt(plan.loc_prior, torch.long),
                                             lt(plan.loc_class, torch.long)]
            if p.encode_variance_in_target:  # the fork divides by the variance and copies the gradient back
                pred = pred + (pred / lt(plan.loc_var) - pred).detach()  # undivided (straight through)
            target = lt(plan.loc_target)
            pred = torch.where(lt(plan.loc_keep, torch.bool), pred, target)
            d = pred - target
            if p.loc_loss_type == MB.SMOOTH_L1:
                ad = d.abs()
                lloss = torch.where(ad < 1, 0.5 * d * d, ad - 0.5).sum()
            else:  # EuclideanLoss over one "num": sum(d^2) / 2
                lloss = (d * d).sum() / 2
            total = total + p.loc_weight * lloss / nz
        if self.use_conf:
            x = conf.reshape(num, P, C)
            if self.mining:
                if not plan.conf_img:
                    return total
                ii = torch.as_tensor(plan.conf_img, device=dev)
                jj = torch.as_tensor(plan.conf_prior, device=dev)
                x = x[ii, jj]
                lab = np.asarray(plan.conf_label, np.int64)
                flat_pos = None
            else:  # every prior: background unless matched
                lab = np.full((num, P), p.background_label_id, np.int64)
                flat_pos = []
                for i, mi in enumerate(plan.match_indices):
                    for label in sorted(mi):
                        idx = mi[label]
                        for j in np.nonzero(idx > -1)[0]:
                            g = self._gt_label(plan.gt_labels[i][idx[j]])
                            lab[i, j] = g
                            flat_pos.append(i * P + int(j) * C + g)
                x = x.reshape(-1, C)
                lab = lab.reshape(-1)
            if p.conf_loss_type == MB.SOFTMAX:
                logp = torch.log_softmax(x, -1).gather(-1, torch.as_tensor(lab, device=dev)[:, None])
                closs = -clamp_st(logp, LOG_FLT_MIN).sum()
            else:  # SigmoidCrossEntropyLoss over targets filled with background_label_id, then 1s
                t = np.full(x.shape, p.background_label_id, np.float32)
                if self.mining:
                    ok = np.nonzero(lab < C)[0]  # a background id outside [0, C) sets no 1
                    t[ok, lab[ok]] = 1
                else:  # the fork's layout: image i's positives at i * P + j * C + label of the flat targets
                    t.reshape(-1)[flat_pos] = 1
                closs = F.binary_cross_entropy_with_logits(x, torch.as_tensor(t, device=dev, dtype=x.dtype),
                                                           reduction="sum")
            total = total + closs / nz
        return total

    def extra_repr(self):
        p = self.p
        return (f"num_classes={self.C}, share_location={p.share_location}, "
                f"match_type={MB.MatchType.Name(p.match_type)}, "
                f"overlap_threshold={p.overlap_threshold:g}, mining={MB.MiningType.Name(p.mining_type)}, "
                f"neg_pos_ratio={p.neg_pos_ratio:g}, neg_overlap={p.neg_overlap:g}, "
                f"code_type={CodeType.CodeType.Name(p.code_type)}, normalization={self.norm}")


def _example_label(values, name="label"):
    """A DummyData layer writing one constant row of ``values`` as a (1, 1, 1, len) blob: hand-set ground truth
    (or detections) for the registry sweep, which feeds random numbers to Input blobs."""
    fill = " ".join(f"data_filler {{ type: 'constant' value: {v} }} shape {{ dim: 1 dim: 1 dim: 1 dim: 1 }}"
                    for v in values)
    parts = [f"{name}{k}" for k in range(len(values))]
    tops = " ".join(f"top: '{t}'" for t in parts)
    bottoms = " ".join(f"bottom: '{t}'" for t in parts)
    return (f"layer {{ name: 'dd_{name}' type: 'DummyData' {tops} dummy_data_param {{ {fill} }} }}\n"
            f"layer {{ name: 'cat_{name}' type: 'Concat' {bottoms} top: '{name}' concat_param {{ axis: 3 }} }}\n"
            ).replace("'", '"')


_MB_EXAMPLE = (
    'layer { name: "pb" type: "PriorBox" bottom: "x" bottom: "img" top: "pb" '
    'prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 variance: 0.1 variance: 0.1 variance: 0.2 '
    'variance: 0.2 } }\n' + _example_label([0, 1, 0, 0.1, 0.2, 0.6, 0.7, 0]))


@register("MultiBoxLoss", bottoms=4, tops=1, loss=True,
          export=Export(refuse="is a loss layer: export a deploy prototxt without it"),
          example=example_net("MultiBoxLoss", "multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE "
                                              "overlap_threshold: 0.3 neg_pos_ratio: 2 }",
                              inputs=((2, 4, 2, 3), (2, 3, 8, 12), (2, 96), (2, 72)),
                              names=("x", "img", "loc", "conf"), before=_MB_EXAMPLE,
                              bottoms=("loc", "conf", "pb", "label"),
                              propagate_down=(True, True, False, False)))
def multibox_loss(lp, bottom_shapes, ctx):
    """MultiBoxLoss: multibox_loss_param (the fork's defaults, caffe.proto) and loss_param normalization
    (VALID: by the number of matches) or the legacy normalize. Bottoms: loc (num, P*L*4; L = 1 with
    share_location, else num_classes), conf (num, P*num_classes), priors (1, 2, P*4), ground truth
    (1, 1, G, 8) rows (item_id, label, instance, xmin, ymin, xmax, ymax, difficult). Top: the loss.
    propagate_down defaults to (true, true, false, false) as the fork's LayerSetUp; a term whose bottom has
    propagate_down false is left out of the loss value, as the fork's Forward_cpu."""
    p = lp.multibox_loss_param
    if not p.HasField("num_classes"):
        raise fail(lp, ctx, "needs multibox_loss_param.num_classes")
    C = p.num_classes
    if C < 1:
        raise fail(lp, ctx, "num_classes must be at least 1")
    if p.HasField("do_neg_mining") and p.do_neg_mining != (p.mining_type != MB.NONE):
        raise fail(lp, ctx, "do_neg_mining (deprecated) disagrees with mining_type")
    if p.mining_type != MB.NONE and not p.share_location:
        raise fail(lp, ctx, "negative mining needs share_location: true (as the fork)")
    if p.mining_type != MB.NONE and p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
        raise fail(lp, ctx, "mining with nms_param (NMS over the mined examples) is not implemented in netspec")
    if p.mining_type == MB.HARD_EXAMPLE and p.sample_size <= 0:
        raise fail(lp, ctx, f"sample_size must be positive, got {p.sample_size}")
    if p.conf_loss_type == MB.SOFTMAX and p.background_label_id >= C:
        raise fail(lp, ctx, f"background_label_id {p.background_label_id} must be in [0, {C}) for SOFTMAX")
    if p.map_object_to_agnostic and C != 2:
        raise fail(lp, ctx, "map_object_to_agnostic needs num_classes: 2 (background and object)")
    if p.code_type not in (CodeType.CORNER, CodeType.CENTER_SIZE, CodeType.CORNER_SIZE):
        raise fail(lp, ctx, f"unknown code_type {p.code_type}")
    loc, conf, prior, gt = (tuple(s) for s in bottom_shapes)
    if len(prior) != 3 or prior[2] % 4:
        raise fail(lp, ctx, f"bottom 2 (priors) must have shape (1, 2, P*4), got {prior}")
    P = prior[2] // 4
    L = 1 if p.share_location else C
    if len(loc) < 2 or loc[1] != P * L * 4:
        raise fail(lp, ctx, f"bottom 0 (locations) {loc}: number of priors must match number of location "
                            f"predictions ({P} x {L} x 4 = {P * L * 4} on axis 1)")
    if len(conf) < 2 or conf[1] != P * C:
        raise fail(lp, ctx, f"bottom 1 (confidences) {conf}: number of priors must match number of confidence "
                            f"predictions ({P} x {C} = {P * C} on axis 1)")
    if loc[0] != conf[0]:
        raise fail(lp, ctx, f"bottoms 0 and 1 differ in batch size: {loc[0]} and {conf[0]}")
    if len(gt) != 4 or gt[3] != 8:
        raise fail(lp, ctx, f"bottom 3 (ground truth) must have shape (1, 1, G, 8), got {gt}")
    prop = list(lp.propagate_down) or [True, True, False, False]
    return MultiBoxLoss(ident(lp, ctx), p, normalization(lp), prop[0], prop[1])


# -- DetectionEvaluate ----------------------------------------------------------------------------------------

class DetectionEvaluate(nn.Module):
    """Rows (image, label, score, tp, fp) for the AP computation of the fork's Solver: first one row per
    class ≠ background (-1, label, number of positives, -1, -1), then per image (ascending) and label
    (ascending) its detections by descending score, each a true positive (1, 0) when its best overlap with the
    label's ground truth is >= overlap_threshold and that box is not yet taken, else a false positive (0, 1);
    a best match on a difficult box with evaluate_difficult_gt false gives (0, 0). Rows the fork counts but
    never writes (detections of item_id -1 with a label) stay zero."""

    def __init__(self, num_classes, background, overlap_threshold, evaluate_difficult_gt, name_size_file,
                 resize_mode):
        super().__init__()
        self.num_classes, self.background = num_classes, background
        self.overlap_threshold, self.evaluate_difficult_gt = overlap_threshold, evaluate_difficult_gt
        self.name_size_file, self.resize_mode = name_size_file, resize_mode
        self.sizes = None  # (height, width) per line of name_size_file, read at the first forward
        self.count = 0  # the fork's count_: the image of the size list the next image takes

    def top_shapes(self, bottom_shapes):
        return [(1, 1, self.num_classes - (self.background != -1), 5)]

    def _scale(self, boxes, hw):
        """OutputBBox without a resize_param (or WARP): clip to [0, 1], scale to pixels."""
        h, w = hw
        b = np.clip(boxes, 0, 1) * np.array([w, h, w, h], f32)
        return b.astype(f32)

    def rows(self, det, gt):
        det = np.asarray(det, f32).reshape(-1, 7)
        C, bg = self.num_classes, self.background
        if self.name_size_file and self.sizes is None:
            try:
                with open(self.name_size_file) as fh:
                    parts = fh.read().split()
            except OSError as e:
                raise LayerError(f"DetectionEvaluate: failed to open name size file: {e}") from None
            self.sizes = [(int(parts[k + 1]), int(parts[k + 2])) for k in range(0, len(parts) - 2, 3)]
        pixels = bool(self.sizes)
        n_valid = int((det[:, 1] != -1).sum())
        out = np.zeros((C - (bg != -1) + n_valid, 5), f32)
        try:
            all_gt = ground_truth(gt, bg, True, stop_at_minus_one=True)
        except ValueError as e:
            raise LayerError(f"DetectionEvaluate: {e}") from None
        dets = {}
        for r in det:  # GetDetectionResults
            item = int(r[0])
            if item == -1:
                continue
            label = int(r[1])
            if label == bg:
                raise LayerError(f"DetectionEvaluate: found background label {label} in the detection results")
            dets.setdefault(item, {}).setdefault(label, []).append(r)
        k = 0
        for c in range(C):
            if c == bg:
                continue
            n = 0
            for labels, _, diff in all_gt.values():
                sel = labels == c
                n += int(sel.sum()) if self.evaluate_difficult_gt else int((sel & ~diff).sum())
            out[k] = (-1, c, n, -1, -1)
            k += 1
        for item in sorted(dets):
            for label in sorted(dets[item]):
                if label == -1:
                    continue
                rs = np.array(dets[item][label], f32)
                gl, gb, gd = all_gt.get(item, (np.zeros(0, np.int64), np.zeros((0, 4), f32), np.zeros(0, bool)))
                sel = gl == label
                if not sel.any():
                    for r in rs:
                        out[k] = (item, label, r[2], 0, 1)
                        k += 1
                    continue
                gboxes, gdiff = gb[sel], gd[sel]
                if pixels:
                    gboxes = self._scale(gboxes, self.sizes[self.count])
                rs = rs[np.argsort(-rs[:, 2], kind="stable")]  # SortBBoxDescend (std::sort: ties unspecified)
                visited = np.zeros(len(gboxes), bool)
                for r in rs:
                    out[k, :3] = (item, label, r[2])
                    box = r[3:7]
                    if pixels:
                        box = self._scale(box[None], self.sizes[self.count])[0]
                        ov = _pixel_overlap(box, gboxes)
                    else:
                        ov = _overlap(box, box_sizes(box), gboxes, box_sizes(gboxes))
                    j = int(np.argmax(ov))  # the first maximum, as the fork's strict ">" scan
                    if ov[j] >= f32(self.overlap_threshold):
                        if self.evaluate_difficult_gt or not gdiff[j]:
                            out[k, 3:] = (0, 1) if visited[j] else (1, 0)
                            visited[j] = True
                    else:
                        out[k, 3:] = (0, 1)
                    k += 1
            if self.sizes:
                self.count = (self.count + 1) % len(self.sizes)
        return out

    def forward(self, det, gt):
        if isinstance(det, FakeTensor) or det.device.type == "meta":
            return det.new_zeros(self.top_shapes(None)[0])
        return self._run(det, gt)

    @eager  # numpy rows of a data-dependent count: torch.compile runs it eagerly
    def _run(self, det, gt):
        out = self.rows(det.detach().to("cpu", torch.float32).numpy(), gt.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(out).to(device=det.device, dtype=det.dtype).reshape(1, 1, -1, 5)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, background_label_id={self.background}, "
                f"overlap_threshold={self.overlap_threshold:g}, evaluate_difficult_gt={self.evaluate_difficult_gt}")


def _pixel_overlap(box, boxes):
    """JaccardOverlap(normalized = false) of pixel boxes: widths and heights + 1 (ScaleBBox's sizes)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1
    apart = ((boxes[:, 0] > box[2]) | (boxes[:, 2] < box[0]) | (boxes[:, 1] > box[3]) | (boxes[:, 3] < box[1]))
    size = lambda b: np.where((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]), f32(0),  # noqa: E731
                              (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1))
    inter = iw * ih
    ok = ~apart & (iw > 0) & (ih > 0)
    return np.where(ok, inter / (size(box) + size(boxes) - inter), f32(0)).astype(f32)


@register("DetectionEvaluate", bottoms=2, tops=1,
          backward=False,
          export=Export(refuse="is an evaluation layer with a data-dependent output size"),
          example=example_net("DetectionEvaluate", "detection_evaluate_param { num_classes: 3 }", inputs=(),
                              before=_example_label([0, 1, 0.9, 0.1, 0.2, 0.6, 0.7], "det")
                              + _example_label([0, 1, 0, 0.1, 0.2, 0.6, 0.6, 0]),
                              bottoms=("det", "label")))
def detection_evaluate(lp, bottom_shapes, ctx):
    """DetectionEvaluate: detection_evaluate_param num_classes (required), background_label_id (0),
    overlap_threshold (0.5, > 0), evaluate_difficult_gt (true), name_size_file (lines "name height width":
    boxes are scaled to pixels of the i-th image size, read at the first forward), resize_param (only WARP, the
    default, or absent). Bottoms: detections (1, 1, D, 7) as DetectionOutput's, ground truth (1, 1, G, 8).
    Top: (1, 1, classes + valid detections, 5)."""
    p = lp.detection_evaluate_param
    if not p.HasField("num_classes"):
        raise fail(lp, ctx, "needs detection_evaluate_param.num_classes")
    if not p.overlap_threshold > 0:
        raise fail(lp, ctx, f"overlap_threshold must be positive, got {p.overlap_threshold}")
    if p.HasField("resize_param") and p.resize_param.resize_mode != caffe_pb2.ResizeParameter.WARP \
            and not (p.resize_param.resize_mode == caffe_pb2.ResizeParameter.FIT_SMALL_SIZE
                     and not (p.resize_param.height_scale and p.resize_param.width_scale)):
        raise fail(lp, ctx, "resize_param modes other than WARP are not implemented in netspec")
    det, gt = (tuple(s) for s in bottom_shapes)
    if len(det) != 4 or det[:2] != (1, 1) or det[3] != 7:
        raise fail(lp, ctx, f"bottom 0 (detections) must have shape (1, 1, D, 7), got {det}")
    if len(gt) != 4 or gt[:2] != (1, 1) or gt[3] != 8:
        raise fail(lp, ctx, f"bottom 1 (ground truth) must have shape (1, 1, G, 8), got {gt}")
    return DetectionEvaluate(p.num_classes, p.background_label_id, p.overlap_threshold, p.evaluate_difficult_gt,
                             p.name_size_file, p.resize_param.resize_mode)
