"""Segment images with a deploy net: label PNGs, colour masks and overlays (the library side of tools/infer.py).

Images are prepared as the FCN data layers prepare them: read as BGR, the BGR mean subtracted, multiplied by
``scale``, laid out 1x3xHxW; the deploy net's Input is reshaped to each image's size. Colours: the PASCAL VOC
palette (the standard bit-interleaving colour map) for up to 21 classes, else a deterministic set of
well separated colours (greedy farthest-point picks in CIE Lab) for any number of classes; the ignore label 255
keeps VOC's void colour in both.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from .cli import PROGRESS, add_verbosity, parse_args, setup_logging, tool_device
from ..data.transform import FCN_MEAN
from ..errors import DataError, NetspecError

log = logging.getLogger("netspec")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


# -- palettes (RGB, uint8, 256 entries so any uint8 label can be indexed) ----------------------------------
def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map: bit j of the index's three low bits goes to bit 7-j of R, G, B."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def distinct_palette(n: int) -> np.ndarray:
    """``n`` deterministic, well separated colours: index 0 black (as VOC's background), then greedy
    farthest-point picks in CIE Lab from an RGB grid (each new colour as far as possible from all before it
    and from VOC's void colour). The result has at least 256 rows; row 255 is the void colour when n <= 255."""
    import cv2
    rows = max(256, n)
    k = 9
    while k ** 3 < 4 * n:
        k += 2
    levels = np.round(np.linspace(0, 255, k)).astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = cv2.cvtColor(grid[None], cv2.COLOR_RGB2LAB)[0].astype(np.float32)
    void = voc_palette()[255]
    void_lab = cv2.cvtColor(void.reshape(1, 1, 3), cv2.COLOR_RGB2LAB)[0, 0].astype(np.float32)
    cmap = np.zeros((rows, 3), np.uint8)
    dist = np.minimum(np.linalg.norm(lab - lab[0], axis=1), np.linalg.norm(lab - void_lab, axis=1))
    for i in range(1, n):
        j = int(np.argmax(dist))
        cmap[i] = grid[j]
        dist = np.minimum(dist, np.linalg.norm(lab - lab[j], axis=1))
    if n <= 255:
        cmap[255] = void
    return cmap


def palette_for(num_classes: int) -> np.ndarray:
    """VOC's palette for <= 21 classes, the distinct palette beyond."""
    return voc_palette() if num_classes <= 21 else distinct_palette(num_classes)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H x W labels -> H x W x 3 RGB."""
    return palette[np.asarray(label, np.int64) % len(palette)]


def overlay(image_bgr: np.ndarray, color_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha blend of the colour mask over the image (BGR uint8 out)."""
    mask = color_rgb[..., ::-1].astype(np.float32)
    out = (1.0 - alpha) * image_bgr.astype(np.float32) + alpha * mask
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# -- inputs ------------------------------------------------------------------------------------------------
def list_images(paths: Sequence[str]) -> List[str]:
    """Image files among ``paths`` (files as given; folders listed, sorted, non-recursive)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p)
                              if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(p, f))))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    return out


def preprocess(image_bgr: np.ndarray, mean=FCN_MEAN, scale: float = 1.0) -> np.ndarray:
    """H x W x 3 BGR uint8 -> 1 x 3 x H x W float32, mean-subtracted and scaled (as SegDataLayer)."""
    img = np.asarray(image_bgr, np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].transpose(2, 0, 1)
    img = (img - np.asarray(mean, np.float32).reshape(3, 1, 1)) * np.float32(scale)
    return img[None]


def input_blob(net) -> str:
    if not net.inputs:
        raise NetspecError(f"net '{net.name}' has no Input blob; use a deploy prototxt (an Input layer named "
                           "e.g. 'data')")
    return "data" if "data" in net.inputs else net.inputs[0]


def score_layer(net, layer: Optional[str]) -> str:
    if layer and layer in net.blobs:
        return layer
    if layer and layer != "score":
        raise NetspecError(f"net '{net.name}' has no blob '{layer}' (outputs: {', '.join(net.outputs)})")
    if len(net.outputs) == 1:
        return net.outputs[0]
    raise NetspecError(f"net '{net.name}' has no 'score' blob; name the score blob with --layer "
                       f"(outputs: {', '.join(net.outputs)})")


def predict_scores(net, image_bgr: np.ndarray, mean=FCN_MEAN, scale: float = 1.0,
                   layer: Optional[str] = "score") -> np.ndarray:
    """The C x H x W score map of one image, the net's input reshaped to the image's size."""
    import torch
    x = preprocess(image_bgr, mean, scale)
    name = input_blob(net)
    layer = score_layer(net, layer)
    net.blobs[name].reshape(*x.shape)
    net.blobs[name].data[...] = x
    with torch.no_grad():
        net.forward_only(retain=(layer,))
    return net.blobs[layer].data[0]


def predict_label(net, image_bgr: np.ndarray, mean=FCN_MEAN, scale: float = 1.0,
                  layer: Optional[str] = "score") -> np.ndarray:
    """H x W argmax labels, resized (nearest) to the image when the net's score map differs in size."""
    import cv2
    sc = predict_scores(net, image_bgr, mean, scale, layer)
    lab = sc.argmax(0)
    h, w = image_bgr.shape[:2]
    if lab.shape != (h, w):
        log.warning("score map %s differs from the image size %s; resizing (nearest)", lab.shape, (h, w))
        lab = cv2.resize(lab.astype(np.int32).astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        lab = lab.astype(np.int64)
    return lab


def infer_images(net, files: Sequence[str], out_dir: str, mean=FCN_MEAN, scale: float = 1.0,
                 layer: Optional[str] = "score", alpha: float = 0.5, progress: bool = True,
                 num_classes: Optional[int] = None) -> List[dict]:
    """Write ``out_dir/{labels,color,overlay}/<stem>.png`` for each image. Returns one dict of paths each."""
    import cv2
    from tqdm import tqdm
    for sub in ("labels", "color", "overlay"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    palette = None
    results = []
    for f in tqdm(files, desc="infer", unit="img", disable=not progress):
        img = cv2.imread(f, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{f}: cannot read the image")
        lab = predict_label(net, img, mean, scale, layer)
        if palette is None:
            n = num_classes or net.blobs[score_layer(net, layer)].shape[1]
            palette = palette_for(n)
        stem = os.path.splitext(os.path.basename(f))[0]
        paths = {k: os.path.join(out_dir, k, stem + ".png") for k in ("labels", "color", "overlay")}
        dtype = np.uint8 if lab.max(initial=0) < 256 else np.uint16
        color = colorize(lab, palette)
        for k, arr in (("labels", lab.astype(dtype)), ("color", color[..., ::-1]),
                       ("overlay", overlay(img, color, alpha))):
            if not cv2.imwrite(paths[k], np.ascontiguousarray(arr)):
                raise DataError(f"cannot write {paths[k]}")
        results.append(dict(paths, image=f))
    return results


def build_parser():
    p = argparse.ArgumentParser(prog="infer.py", description="Segment images with a deploy net: writes label "
                                "PNGs (class indices), colour masks and overlays under --out.")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--model", required=True, help="deploy prototxt (an Input layer)")
    p.add_argument("--weights", required=True, help="trained caffemodel(s), comma-separated")
    p.add_argument("--out", required=True, help="output folder (labels/, color/, overlay/)")
    p.add_argument("--layer", default="score", help="score blob (default score, else the single output)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("B", "G", "R"), default=FCN_MEAN,
                   help="BGR mean subtracted as the data layer does (default FCN's %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier after mean subtraction")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask (default 0.5)")
    p.add_argument("--gpu", help="GPU id; default CPU")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the net with its weights frozen in (faster on CPU for many images of one "
                        "size; the first image pays the compile, each new size a recompile). The compiled net is "
                        "kept per input size (netspec.net.compile_cache): a later run loads it in a fraction of "
                        "a second")
    p.add_argument("--compile-cache", metavar="DIR",
                   help="folder of --compile's compiled nets (default $NETSPEC_CACHE_DIR/compiled, else "
                        "~/.cache/netspec/compiled)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations (default: on for CPU inference without --compile, where it is the "
                        "faster layout: 0.89x OpenCV dnn's time on FCN-8s, 0.90-0.95x on ResNet-50, "
                        "BENCHMARKS.md; off on GPUs and with --compile)")
    add_verbosity(p)
    return p


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    from ..net.pycaffe import TEST, Net  # torch: after the arguments (--help stays fast)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        files = list_images(args.images)
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {' '.join(args.images)}")
        device = tool_device(args.gpu)
        net = Net(args.model, TEST, weights=args.weights, device=device)
        channels_last = args.channels_last
        if channels_last is None:
            channels_last = device.type == "cpu" and not args.compile
        if args.compile or channels_last:
            net.configure(compile=args.compile, freeze=args.compile, channels_last=channels_last,
                          cache_dir=args.compile_cache)
        infer_images(net, files, args.out, args.mean, args.scale, args.layer, args.alpha,
                     progress=PROGRESS["enabled"] and sys.stderr.isatty())
        log.info("wrote %d label maps, colour masks and overlays under %s", len(files), args.out)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    return 0
