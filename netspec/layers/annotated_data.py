"""SSD's training data layer ``AnnotatedData`` (weiliu89/caffe, branch ssd).

Follows the fork's src/caffe/layers/annotated_data_layer.cpp (``DataLayerSetUp``, ``load_batch``), the
annotated parts of src/caffe/data_transformer.cpp (``Transform`` of a cv::Mat and of an AnnotatedDatum,
``TransformAnnotation``, ``CropImage``, ``ExpandImage``, ``DistortImage``), src/caffe/util/sampler.cpp
(``GenerateBatchSamples``, ``GenerateSamples``, ``SampleBBox``, ``SatisfySampleConstraint``),
src/caffe/util/im_transforms.cpp (``ApplyResize``, ``ApplyDistort`` and the Random*/Adjust* helpers,
``UpdateBBoxByResizePolicy``, ``InferNewSize``) and the box helpers of src/caffe/util/bbox_util.cpp
(``ClipBBox``, ``ScaleBBox``, ``LocateBBox``, ``ProjectBBox``, ``IntersectBBox``, ``BBoxSize``,
``JaccardOverlap``, ``BBoxCoverage``, ``MeetEmitConstraint``).

Per record, as ``load_batch``: decode; ``distort_param`` (photometric distortion); ``expand_param`` (place the
image in a larger canvas of the mean colour); ``annotated_data_param.batch_sampler`` (random boxes meeting
their constraint; one of them picked uniformly crops the image, boxes kept by ``emit_constraint``); then the
transform: ``resize_param`` (WARP or FIT_LARGE_SIZE_AND_PAD, interpolation drawn among ``interp_mode``),
``crop_size`` (random in TRAIN, centred in TEST), ``mirror``, ``mean_value`` and ``scale``. The boxes follow
every step. Tops: ``data`` (N, C, H, W) and ``label`` (1, 1, num_boxes, 8) rows (item_id, group_label,
instance_id, xmin, ymin, xmax, ymax, difficult), one row of -1 when the batch has no box; records without an
annotation type give Caffe's (N,) label instead.

Random draws come from the batch's numpy generator (``DataTransformer.batch_rng``: seed, batch index,
shard), in the fork's order per item, so batches are reproducible, independent of the loader workers and
resume exactly. Differences from the fork: the fork re-encodes the image as JPEG after distortion,
expansion and cropping (lossy); netspec keeps the decoded pixels. ``noise_param`` is parsed and not applied
(a warning says so); ``mean_file``, ``crop_h``/``crop_w`` and resize mode FIT_SMALL_SIZE are refused.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import cv2
import numpy as np

from ..data.datum import decode_datum, key_str
from ..data.lmdb_io import LMDBReader
from ..data.shard import Shard
from ..errors import DataError, LayerError
from ..proto import caffe_pb2
from ..registry import Export, register
from .data import _DataModule, _LMDBSource, _deprecated_fields, _ident, check_batch_size, resolve_path

log = logging.getLogger("netspec")

F = np.float32
RP = caffe_pb2.ResizeParameter
_INTERP = {RP.LINEAR: cv2.INTER_LINEAR, RP.AREA: cv2.INTER_AREA, RP.NEAREST: cv2.INTER_NEAREST,
           RP.CUBIC: cv2.INTER_CUBIC, RP.LANCZOS4: cv2.INTER_LANCZOS4}
_PAD = {RP.CONSTANT: cv2.BORDER_CONSTANT, RP.MIRRORED: cv2.BORDER_REFLECT101, RP.REPEAT_NEAREST: cv2.BORDER_REPLICATE}


# ----------------------------------------------------------------------------------------------------------
# boxes (bbox_util.cpp), in float32 as the fork; a box is a length-4 float32 array (xmin, ymin, xmax, ymax)
# ----------------------------------------------------------------------------------------------------------
def bbox_size(b) -> F:
    if b[2] < b[0] or b[3] < b[1]:
        return F(0)
    return F((b[2] - b[0]) * (b[3] - b[1]))


def clip_bbox(b) -> np.ndarray:
    return np.clip(np.asarray(b, F), F(0), F(1))


def intersect_bbox(a, b) -> np.ndarray:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return np.zeros(4, F)
    return np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])], F)


def jaccard_overlap(a, b) -> F:
    i = intersect_bbox(a, b)
    iw, ih = F(i[2] - i[0]), F(i[3] - i[1])
    if iw > 0 and ih > 0:
        inter = F(iw * ih)
        return F(inter / F(bbox_size(a) + bbox_size(b) - inter))
    return F(0)


def bbox_coverage(a, b) -> F:
    """The part of ``a`` covered by ``b``."""
    inter = bbox_size(intersect_bbox(a, b))
    return F(inter / bbox_size(a)) if inter > 0 else F(0)


def locate_bbox(src, b) -> np.ndarray:
    w, h = F(src[2] - src[0]), F(src[3] - src[1])
    return np.array([src[0] + b[0] * w, src[1] + b[1] * h, src[0] + b[2] * w, src[1] + b[3] * h], F)


def project_bbox(src, b) -> Optional[np.ndarray]:
    """``b`` in the coordinates of ``src`` (clipped), or None when they do not overlap or nothing is left."""
    if b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]:
        return None
    w, h = F(src[2] - src[0]), F(src[3] - src[1])
    p = clip_bbox(np.array([(b[0] - src[0]) / w, (b[1] - src[1]) / h, (b[2] - src[0]) / w, (b[3] - src[1]) / h], F))
    return p if bbox_size(p) > 0 else None


def meet_emit_constraint(src, b, emit_type, emit_overlap) -> bool:
    if emit_type == caffe_pb2.EmitConstraint.CENTER:
        xc, yc = F((b[0] + b[2]) / F(2)), F((b[1] + b[3]) / F(2))
        return bool(src[0] <= xc <= src[2] and src[1] <= yc <= src[3])
    return bool(bbox_coverage(b, src) > F(emit_overlap))


def satisfy_sample_constraint(sampled, objects, c: "caffe_pb2.SampleConstraint") -> bool:
    """``SatisfySampleConstraint``: true without bounds, else when one object box meets every bound given."""
    has_j = c.HasField("min_jaccard_overlap") or c.HasField("max_jaccard_overlap")
    has_s = c.HasField("min_sample_coverage") or c.HasField("max_sample_coverage")
    has_o = c.HasField("min_object_coverage") or c.HasField("max_object_coverage")
    if not (has_j or has_s or has_o):
        return True
    found = False
    for ob in objects:
        if has_j:
            v = jaccard_overlap(sampled, ob)
            if c.HasField("min_jaccard_overlap") and v < F(c.min_jaccard_overlap):
                continue
            if c.HasField("max_jaccard_overlap") and v > F(c.max_jaccard_overlap):
                continue
            found = True
        if has_s:
            v = bbox_coverage(sampled, ob)
            if c.HasField("min_sample_coverage") and v < F(c.min_sample_coverage):
                continue
            if c.HasField("max_sample_coverage") and v > F(c.max_sample_coverage):
                continue
            found = True
        if has_o:
            v = bbox_coverage(ob, sampled)
            if c.HasField("min_object_coverage") and v < F(c.min_object_coverage):
                continue
            if c.HasField("max_object_coverage") and v > F(c.max_object_coverage):
                continue
            found = True
        if found:
            return True
    return found


def sample_bbox(s: "caffe_pb2.Sampler", rng) -> np.ndarray:
    """``SampleBBox``: scale, then aspect ratio (clamped to [scale², 1/scale²]), then the offsets."""
    scale = F(rng.uniform(s.min_scale, s.max_scale))
    ar = F(rng.uniform(s.min_aspect_ratio, s.max_aspect_ratio))
    ar = min(max(ar, F(scale * scale)), F(1 / F(scale * scale)))
    bw, bh = F(scale * np.sqrt(ar, dtype=F)), F(scale / np.sqrt(ar, dtype=F))
    # at the clamped ratios float rounding can give 1 + 1 ulp, and the offset's range would be negative: capped
    # at 1 as the fork's later fix (weiliu89/caffe commit 4ca51d9, master; branch ssd aborts in caffe_rng_uniform)
    bw, bh = min(bw, F(1)), min(bh, F(1))
    w_off = F(rng.uniform(0.0, float(F(1) - bw)))
    h_off = F(rng.uniform(0.0, float(F(1) - bh)))
    return np.array([w_off, h_off, w_off + bw, h_off + bh], F)


def generate_batch_samples(objects, batch_samplers, rng) -> List[np.ndarray]:
    """``GenerateBatchSamples``: for each batch sampler (use_original_image), up to max_trials draws, kept
    when they satisfy the constraint, at most max_sample (when given) per sampler."""
    out = []
    unit = np.array([0, 0, 1, 1], F)
    for bs in batch_samplers:
        if not bs.use_original_image:
            continue
        found = 0
        for _ in range(bs.max_trials):
            if bs.HasField("max_sample") and found >= bs.max_sample:
                break
            b = locate_bbox(unit, sample_bbox(bs.sampler, rng))
            if satisfy_sample_constraint(b, objects, bs.sample_constraint):
                found += 1
                out.append(b)
    return out


def check_samplers(batch_samplers, where=""):
    for i, bs in enumerate(batch_samplers):
        s = bs.sampler
        if not (0 < s.min_scale <= s.max_scale <= 1):
            raise LayerError(f"{where}batch_sampler {i}: need 0 < min_scale <= max_scale <= 1 "
                             f"(got {s.min_scale}, {s.max_scale})")
        if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio < np.finfo(F).max):
            raise LayerError(f"{where}batch_sampler {i}: need 0 < min_aspect_ratio <= max_aspect_ratio "
                             f"(got {s.min_aspect_ratio}, {s.max_aspect_ratio})")


# ----------------------------------------------------------------------------------------------------------
# annotations: rows (group_label, instance_id, xmin, ymin, xmax, ymax, difficult), float32, groups in order
# ----------------------------------------------------------------------------------------------------------
def rows_of(ad) -> np.ndarray:
    rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult)
            for g in ad.annotation_group for a in g.annotation]
    return np.asarray(rows, dtype=F).reshape(-1, 7)


def transform_rows(rows, crop, emit, mirror=False, resize=None, img_hw=None) -> np.ndarray:
    """``TransformAnnotation``: each box resized (``UpdateBBoxByResizePolicy``), kept when it meets the emit
    constraint (``emit`` = (type, overlap) or None) and overlaps ``crop``, projected into it, mirrored."""
    out = []
    for r in rows:
        b = r[2:6].copy()
        if resize is not None:
            b = update_bbox_by_resize(resize, img_hw[1], img_hw[0], b)
        if emit is not None and not meet_emit_constraint(crop, b, *emit):
            continue
        p = project_bbox(crop, b)
        if p is None:
            continue
        if mirror:
            p = np.array([F(1) - p[2], p[1], F(1) - p[0], p[3]], F)
        out.append(np.concatenate([r[:2], p, r[6:]]))
    return np.asarray(out, F).reshape(-1, 7)


def update_bbox_by_resize(rp, old_w, old_h, b) -> np.ndarray:
    """``UpdateBBoxByResizePolicy`` (WARP and FIT_LARGE_SIZE_AND_PAD)."""
    nh, nw = F(rp.height), F(rp.width)
    ow, oh = F(old_w), F(old_h)
    orig_aspect, new_aspect = F(ow / oh), F(nw / nh)
    x0, y0, x1, y1 = b[0] * ow, b[1] * oh, b[2] * ow, b[3] * oh
    if rp.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD and orig_aspect > new_aspect:
        pad = F((nh - nw / orig_aspect) / F(2))
        x0, x1 = max(F(0), x0 * nw / ow), min(nw, x1 * nw / ow)
        y0 = pad + max(F(0), F(y0 * (nh - 2 * pad) / oh))
        y1 = pad + min(nh, F(y1 * (nh - 2 * pad) / oh))
    elif rp.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:
        pad = F((nw - orig_aspect * nh) / F(2))
        x0 = pad + max(F(0), F(x0 * (nw - 2 * pad) / ow))
        x1 = pad + min(nw, F(x1 * (nw - 2 * pad) / ow))
        y0, y1 = max(F(0), y0 * nh / oh), min(nh, y1 * nh / oh)
    else:  # WARP
        x0, x1 = max(F(0), x0 * nw / ow), min(nw, x1 * nw / ow)
        y0, y1 = max(F(0), y0 * nh / oh), min(nh, y1 * nh / oh)
    return np.array([x0 / nw, y0 / nh, x1 / nw, y1 / nh], F)


# ----------------------------------------------------------------------------------------------------------
# images (H x W x C uint8, BGR): im_transforms.cpp and the cv::Mat parts of data_transformer.cpp
# ----------------------------------------------------------------------------------------------------------
def _convert(img, alpha, beta):
    """cv::Mat::convertTo(-1, alpha, beta) on uint8: saturate_cast(round-half-even(x * alpha + beta))."""
    return np.clip(np.rint(img.astype(F) * F(alpha) + F(beta)), 0, 255).astype(np.uint8)


def _hsv_channel(img, ch, alpha, beta):
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, ch] = _convert(hsv[:, :, ch], alpha, beta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def apply_distort(img, p: "caffe_pb2.DistortionParameter", rng) -> np.ndarray:
    """``ApplyDistort``: brightness, contrast, saturation, hue, channel order (contrast last but one when the
    first draw is <= 0.5), each with its own probability."""
    def brightness(im):
        if F(rng.uniform(0, 1)) < F(p.brightness_prob):
            d = F(rng.uniform(-p.brightness_delta, p.brightness_delta))
            if abs(d) > 0:
                im = _convert(im, 1, d)
        return im

    def contrast(im):
        if F(rng.uniform(0, 1)) < F(p.contrast_prob):
            d = F(rng.uniform(p.contrast_lower, p.contrast_upper))
            if abs(d - 1) > 1e-3:
                im = _convert(im, d, 0)
        return im

    def saturation(im):
        if F(rng.uniform(0, 1)) < F(p.saturation_prob):
            d = F(rng.uniform(p.saturation_lower, p.saturation_upper))
            im = _hsv_channel(im, 1, d, 0)  # the fork's test (|d - 1| != 1e-3) is all but always true
        return im

    def hue(im):
        if F(rng.uniform(0, 1)) < F(p.hue_prob):
            d = F(rng.uniform(-p.hue_delta, p.hue_delta))
            if abs(d) > 0:
                im = _hsv_channel(im, 0, 1, d)
        return im

    def order(im):
        if F(rng.uniform(0, 1)) < F(p.random_order_prob):
            if im.shape[2] != 3:
                raise DataError("distort_param.random_order_prob needs 3-channel images")
            im = np.ascontiguousarray(im[:, :, rng.permutation(3)])
        return im

    if im_is_color(img) is False and (p.saturation_prob > 0 or p.hue_prob > 0):
        raise DataError("distort_param: saturation and hue distortion need 3-channel (colour) images")
    steps = ((brightness, contrast, saturation, hue, order) if F(rng.uniform(0, 1)) > F(0.5)
             else (brightness, saturation, hue, contrast, order))
    for s in steps:
        img = s(img)
    return img


def im_is_color(img) -> bool:
    return img.shape[2] == 3


def apply_resize(img, rp, rng) -> np.ndarray:
    """``ApplyResize``: interpolation drawn uniformly among ``interp_mode`` (LINEAR when none), then WARP
    (cv::resize to width x height) or FIT_LARGE_SIZE_AND_PAD (keep the aspect, pad to the size)."""
    interp = cv2.INTER_LINEAR
    if len(rp.interp_mode):
        n = len(rp.interp_mode)
        cum = np.cumsum(np.full(n, F(1) / F(n), F), dtype=F)
        v = F(rng.uniform(0, float(cum[-1])))
        interp = _INTERP[rp.interp_mode[min(int(np.searchsorted(cum, v, side="left")), n - 1)]]
    c = img.shape[2]
    if rp.resize_mode == RP.WARP:
        out = cv2.resize(img, (rp.width, rp.height), interpolation=interp)
    else:  # FIT_LARGE_SIZE_AND_PAD (AspectKeepingResizeAndPad)
        pads = list(rp.pad_value) or [0.0]
        pads = (pads * c if len(pads) == 1 else pads) + [0.0] * 4
        orig, new = F(img.shape[1]) / F(img.shape[0]), F(rp.width) / F(rp.height)
        if orig > new:
            h = int(np.floor(F(rp.width) / orig))
            out = cv2.resize(img, (rp.width, h), interpolation=interp)
            top = int(np.floor((rp.height - h) / 2.0))
            out = cv2.copyMakeBorder(out, top, rp.height - h - top, 0, 0, _PAD[rp.pad_mode], value=pads[:4])
        else:
            w = int(np.floor(orig * F(rp.height)))
            out = cv2.resize(img, (w, rp.height), interpolation=interp)
            left = int(np.floor((rp.width - w) / 2.0))
            out = cv2.copyMakeBorder(out, 0, 0, left, rp.width - w - left, _PAD[rp.pad_mode], value=pads[:4])
    return out if out.ndim == 3 else out[:, :, None]


def crop_image(img, box):
    """``CropImage``: the pixels of ``box`` (clipped, scaled, truncated to integers)."""
    h, w = img.shape[:2]
    c = clip_bbox(box)
    sx0, sy0, sx1, sy1 = F(c[0] * F(w)), F(c[1] * F(h)), F(c[2] * F(w)), F(c[3] * F(h))
    w_off, h_off = int(sx0), int(sy0)
    cw, ch = int(F(sx1 - sx0)), int(F(sy1 - sy0))
    return img[h_off:h_off + ch, w_off:w_off + cw]


def expand_image(img, ratio, fill, rng):
    """``ExpandImage``: a canvas int(H·ratio) x int(W·ratio) of ``fill`` (the mean colour, else 0) with the image
    at a random integer offset; returns (canvas, the canvas box in the image's normalized coordinates)."""
    h, w, c = img.shape
    H, W = int(F(h) * F(ratio)), int(F(w) * F(ratio))
    h_off = np.floor(F(rng.uniform(0.0, float(H - h))))
    w_off = np.floor(F(rng.uniform(0.0, float(W - w))))
    box = np.array([-w_off / F(w), -h_off / F(h), (F(W) - w_off) / F(w), (F(H) - h_off) / F(h)], F)
    canvas = np.empty((H, W, c), np.uint8)
    canvas[...] = fill
    ho, wo = int(h_off), int(w_off)
    canvas[ho:ho + h, wo:wo + w] = img
    return canvas, box


# ----------------------------------------------------------------------------------------------------------
# the transformer
# ----------------------------------------------------------------------------------------------------------
class AnnotatedTransformer:
    """The fork's DataTransformer for an AnnotatedDatum (picklable: the messages are kept as bytes)."""

    def __init__(self, tp: "caffe_pb2.TransformationParameter", adp: "caffe_pb2.AnnotatedDataParameter",
                 phase, seed: int):
        self.phase = phase
        self.seed = int(seed)
        self.scale = F(tp.scale)
        self.mirror = bool(tp.mirror)
        self.crop_size = int(tp.crop_size)
        self.force_color, self.force_gray = bool(tp.force_color), bool(tp.force_gray)
        self.mean_values = np.asarray(list(tp.mean_value), F)
        self._resize = tp.resize_param.SerializeToString() if tp.HasField("resize_param") else None
        self._distort = tp.distort_param.SerializeToString() if tp.HasField("distort_param") else None
        self._expand = tp.expand_param.SerializeToString() if tp.HasField("expand_param") else None
        self.emit = ((tp.emit_constraint.emit_type, tp.emit_constraint.emit_overlap)
                     if tp.HasField("emit_constraint") else None)
        self._samplers = [b.SerializeToString() for b in adp.batch_sampler]
        self._parse()

    def _parse(self):
        self.resize = RP.FromString(self._resize) if self._resize is not None else None
        self.distort = caffe_pb2.DistortionParameter.FromString(self._distort) if self._distort is not None else None
        self.expand = caffe_pb2.ExpansionParameter.FromString(self._expand) if self._expand is not None else None
        self.samplers = [caffe_pb2.BatchSampler.FromString(b) for b in self._samplers]

    def __getstate__(self):
        s = self.__dict__.copy()
        for k in ("resize", "distort", "expand", "samplers"):
            s.pop(k)
        return s

    def __setstate__(self, s):
        self.__dict__.update(s)
        self._parse()

    def batch_rng(self, index, shard: Shard = Shard()):
        return np.random.default_rng(shard.rng_key(self.seed, index))

    # -- shapes ----------------------------------------------------------------------------------------
    def infer_shape(self, c, h, w):
        """``InferBlobShape``: the resize size (WARP / FIT_LARGE_SIZE_AND_PAD), then crop_size."""
        if self.resize is not None:
            h, w = self.resize.height, self.resize.width
        if self.crop_size:
            if h < self.crop_size or w < self.crop_size:
                raise DataError(f"image is {h}x{w} (after resize), smaller than crop_size {self.crop_size}")
            h = w = self.crop_size
        return c, h, w

    def decode(self, ad, key) -> np.ndarray:
        """The record's image as H x W x C uint8 (raw Datums too; the fork handles encoded ones only)."""
        a = decode_datum(ad.datum, key, self.force_color, self.force_gray)
        if a.dtype != np.uint8:
            raise DataError(f"record '{key_str(key)}': AnnotatedData needs uint8 pixels, not float_data")
        return np.ascontiguousarray(a.transpose(1, 2, 0))

    def _fill(self, c):
        if self.mean_values.size == 0:
            return np.zeros(c, np.uint8)
        mv = self.mean_values if self.mean_values.size == c else np.repeat(self.mean_values[:1], c)
        if mv.size != c:
            raise DataError(f"specify either 1 mean_value or as many as channels: {c} (got {self.mean_values.size})")
        return np.clip(np.rint(mv), 0, 255).astype(np.uint8)

    # -- one record ------------------------------------------------------------------------------------
    def augment(self, img, rows, rng):
        """distort, expand, sample and crop (``load_batch`` before ``Transform``)."""
        if self.distort is not None:
            img = apply_distort(img, self.distort, rng)
        if self.expand is not None:
            e = self.expand
            if not F(rng.uniform(0, 1)) > F(e.prob) and not abs(e.max_expand_ratio - 1.0) < 1e-2:
                ratio = F(rng.uniform(1.0, e.max_expand_ratio))
                img, box = expand_image(img, ratio, self._fill(img.shape[2]), rng)
                rows = transform_rows(rows, box, self.emit)
        if self.samplers:
            boxes = generate_batch_samples([r[2:6] for r in rows], self.samplers, rng)
            if boxes:
                box = boxes[int(rng.integers(len(boxes)))]
                img = crop_image(img, box)
                rows = transform_rows(rows, clip_bbox(box), self.emit)
        return img, rows

    def transform(self, img, rows, out, rng):
        """``Transform`` of the cv::Mat (mirror drawn first, resize, crop, mean, scale) and
        ``TransformAnnotation`` with the resize policy; writes C x H x W float32 into ``out``."""
        oh, ow = out.shape[1:]
        do_mirror = self.mirror and int(rng.integers(2)) == 1
        src_hw = img.shape[:2]
        if self.resize is not None:
            img = apply_resize(img, self.resize, rng)
        ih, iw = img.shape[:2]
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(rng.integers(ih - oh + 1))
                w_off = int(rng.integers(iw - ow + 1))
            else:
                h_off, w_off = (ih - oh) // 2, (iw - ow) // 2
            if ih < oh or iw < ow:
                raise DataError(f"image is {ih}x{iw}, smaller than crop_size {self.crop_size}")
        elif (ih, iw) != (oh, ow):
            raise DataError(f"gives a {ih}x{iw} image but this batch's items are {oh}x{ow} (set resize_param, or "
                            "store images of one size)")
        crop = np.array([F(w_off) / F(iw), F(h_off) / F(ih), F(w_off + ow) / F(iw), F(h_off + oh) / F(ih)], F)
        chw = img[h_off:h_off + oh, w_off:w_off + ow].transpose(2, 0, 1)
        if do_mirror:
            chw = chw[:, :, ::-1]
        c = chw.shape[0]
        if self.mean_values.size:
            mv = self.mean_values if self.mean_values.size == c else np.repeat(self.mean_values[:1], c)
            if mv.size != c:
                raise DataError(f"specify either 1 mean_value or as many as channels: {c} "
                                f"(got {self.mean_values.size})")
            np.subtract(chw, mv[:, None, None], out=out, dtype=F)
        else:
            out[...] = chw
        if self.scale != 1:
            out *= self.scale
        if rows is None:
            return None
        return transform_rows(rows, crop, self.emit, do_mirror, self.resize, src_hw)


# ----------------------------------------------------------------------------------------------------------
# the source
# ----------------------------------------------------------------------------------------------------------
class _AnnotatedSource(_LMDBSource):
    """Batches of an LMDB of AnnotatedDatum in key order with wrap-around: ``_LMDBSource``'s cursor, planning,
    state and names, with AnnotatedDatum records and the boxes' label rows."""

    def __init__(self, path, batch_size, transformer: AnnotatedTransformer, labels: bool, anno_type,
                 shard: Shard = Shard()):
        super().__init__(path, batch_size, transformer, labels, shard)
        self.anno_type = anno_type  # None: the datum's own type
        self.rich = None

    def _parse(self, value, key):
        try:
            return caffe_pb2.AnnotatedDatum.FromString(bytes(value))
        except Exception as e:
            raise DataError(f"record '{key_str(key)}' is not an AnnotatedDatum ({type(e).__name__}: {e})") from None

    def top_shapes(self):
        with LMDBReader(self.path) as r:
            key, value = r.first()
        try:
            ad = self._parse(value, key)
            img = self.transformer.decode(ad, key)
            shape = (self.batch_size,) + tuple(self.transformer.infer_shape(img.shape[2], *img.shape[:2]))
        except DataError as e:
            raise DataError(self._where() + str(e)) from None
        shapes = [shape]
        self.rich = ad.HasField("type") or self.anno_type is not None
        if self.labels:
            shapes.append((1, 1, max(len(rows_of(ad)), 1), 8) if self.rich else (self.batch_size,))
        return shapes

    def build(self, task, out):
        if self.rich is None:
            self.top_shapes()
        n = self.batch_size
        t = self.transformer
        rng = t.batch_rng(task.index, self.shard)
        data = None
        all_rows = []
        label = out.array((n,)) if self.labels and not self.rich else None
        key = None
        try:
            for i, key in enumerate(task.items):
                out.item(i)
                ad = self._parse(self.reader.get(key), key)
                if self.rich and self.labels and not ad.HasField("type"):
                    raise DataError(f"record '{key_str(key)}': some datum misses AnnotationType")
                img = t.decode(ad, key)
                if data is None:  # the batch's shape: InferBlobShape of its first record, as stored
                    data = out.array((n,) + tuple(t.infer_shape(img.shape[2], *img.shape[:2])))
                rows = rows_of(ad)
                img, rows = t.augment(img, rows, rng)
                if img.shape[2] != data.shape[1]:
                    raise DataError(f"record '{key_str(key)}' has {img.shape[2]} channels, the batch "
                                    f"{data.shape[1]}")
                new_rows = t.transform(img, rows, data[i], rng)
                if self.labels and self.rich:
                    all_rows.append(np.concatenate([np.full((len(new_rows), 1), i, F), new_rows], 1))
                elif label is not None:
                    label[i] = ad.datum.label
        except DataError as e:
            raise DataError(self._where() + str(e)) from None
        except Exception as e:
            what = f"record '{key_str(key)}'" if key is not None else "reading the next record"
            raise DataError(f"{self._where()}{what}: {type(e).__name__}: {e}") from e
        if not self.labels:
            return (data,)
        if self.rich:
            rows = np.concatenate(all_rows, 0) if all_rows else np.zeros((0, 8), F)
            lab = rows.reshape(1, 1, -1, 8) if len(rows) else np.full((1, 1, 1, 8), -1, F)
            return data, np.ascontiguousarray(lab, F)
        return data, label


@register("AnnotatedData", bottoms=0, tops=(1, 2),
          export=Export(refuse="reads an LMDB at run time: replace it with an Input layer (a deploy prototxt)"),
          colour="#DDDDDD",
          example="",
          backward=False)
def annotated_data_layer(lp, bottom_shapes, ctx):
    """AnnotatedData: ``data_param`` (source, batch_size, prefetch), ``annotated_data_param`` (batch_sampler,
    label_map_file: not read, as the fork's layer; anno_type), ``transform_param`` with the SSD additions."""
    ident = _ident(lp, ctx)
    p = lp.data_param
    adp = lp.annotated_data_param
    tp = lp.transform_param
    check_batch_size(p, "data_param", ident)
    _deprecated_fields(lp, p, ident)
    if tp.HasField("mean_file"):
        raise LayerError(f"{ident}: transform_param.mean_file is not supported by netspec's AnnotatedData; "
                         "give mean_value (the SSD releases do)")
    if tp.force_color and tp.force_gray:
        raise LayerError(f"{ident}: transform_param: cannot set both force_color and force_gray")
    if tp.HasField("resize_param"):
        rp = tp.resize_param
        if rp.resize_mode == RP.FIT_SMALL_SIZE:
            raise LayerError(f"{ident}: resize_param.resize_mode FIT_SMALL_SIZE is not supported (use WARP or "
                             "FIT_LARGE_SIZE_AND_PAD)")
        if rp.height <= 0 or rp.width <= 0:
            raise LayerError(f"{ident}: resize_param needs positive height and width (got {rp.height} x "
                             f"{rp.width})")
        if len(rp.pad_value) > 1 and len(rp.pad_value) not in (3,):
            log.warning("%s: resize_param.pad_value gives %d values (1 or one per channel expected)",
                        ident, len(rp.pad_value))
    if tp.HasField("noise_param"):
        log.warning("%s: transform_param.noise_param is parsed and not applied by netspec", ident)
    if tp.HasField("expand_param") and tp.expand_param.max_expand_ratio < 1:
        raise LayerError(f"{ident}: expand_param.max_expand_ratio must be >= 1 "
                         f"(got {tp.expand_param.max_expand_ratio})")
    check_samplers(adp.batch_sampler, f"{ident}: ")
    if tp.HasField("distort_param"):
        d = tp.distort_param
        for name, v in (("brightness_delta", d.brightness_delta), ("contrast_lower", d.contrast_lower),
                        ("saturation_lower", d.saturation_lower), ("hue_delta", d.hue_delta)):
            if v < 0:
                raise LayerError(f"{ident}: distort_param.{name} must be non-negative (got {v})")
        if d.contrast_upper < d.contrast_lower or d.saturation_upper < d.saturation_lower:
            raise LayerError(f"{ident}: distort_param: upper bounds must be >= lower bounds")
    import torch
    seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    source = resolve_path(p.source, ctx, "data_param.source", ident)
    anno_type = adp.anno_type if adp.HasField("anno_type") else None
    try:
        src = _AnnotatedSource(source, p.batch_size, AnnotatedTransformer(tp, adp, ctx.phase, seed),
                               len(lp.top) > 1, anno_type, Shard.current(ctx.phase == caffe_pb2.TRAIN))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(ident) else f"{ident}: {msg}") from None
    return _DataModule(src, ident, prefetch=p.prefetch)
