"""A deterministic synthetic segmentation dataset: textured shapes on a noisy background.

Classes: 0 background, 1 disc, 2 square, 3 triangle. Every image draws 1-3 shapes with their own colour
family, a per-class stripe texture and Gaussian noise, so a small FCN must use colour, texture and shape
together. ``pack(root)`` writes ``root/{train,val}/{images,labels}`` LMDBs of PNG-encoded Datums (image BGR,
label single-channel), the layout ``netspec.layers.seg_lmdb.SegDataLayer`` reads.
"""
import fcntl
import logging
import os
from typing import Tuple

import cv2
import numpy as np

from .classes import DEMO_CLASSES as CLASSES
from .datum import encode_image, encoded_datum
from .lmdb_io import LMDBWriter

log = logging.getLogger("netspec")

#: Where the demo's nets (netspec.authoring.zoo.demo) read the set, relative to the working directory.
DEMO_ROOT = os.path.join("data", "demo")
_BASE = np.array([[90, 90, 90], [40, 60, 200], [200, 80, 40], [60, 190, 70]], np.float32)


def make_sample(rng: np.random.Generator, size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """One (H x W x 3 uint8 BGR image, H x W uint8 label) pair."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(size * 0.12, size * 0.25)
        cy, cx = rng.uniform(r, size - r, 2)
        if cls == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif cls == 2:
            mask = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r * 0.8], [cx + r, cy + r * 0.8]], np.int32)
            m = np.zeros((size, size), np.uint8)
            cv2.fillPoly(m, [pts], 1)
            mask = m.astype(bool)
        label[mask] = cls
    img = _BASE[label] + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    stripes = np.sin((xx * (1 + label) + yy * 0.5 * label) * 0.6)[..., None] * 18
    img += stripes + rng.uniform(-20, 20, 3).astype(np.float32)  # per-image colour shift
    return np.clip(img, 0, 255).astype(np.uint8), label


def existing(root: str, split: str):
    """Records in an already packed ``root/split`` (the images LMDB), or None when it is not there."""
    d = os.path.join(root, split)
    if not (os.path.isdir(os.path.join(d, "images")) and os.path.isdir(os.path.join(d, "labels"))):
        return None
    from .lmdb_io import LMDBReader
    return len(LMDBReader(os.path.join(d, "images")))


def pack(root: str, n_train: int = 400, n_val: int = 50, size: int = 64, seed: int = 1,
         overwrite: bool = False, report: dict = None) -> str:
    """Generate and pack the dataset under ``root`` (atomically per LMDB). Returns ``root``.

    A split already packed there is kept as it is (whatever its size) unless ``overwrite``; ``report``, when
    given, receives ``{split: ("kept" | "wrote", records)}``.

    Safe to call from several processes at once (the ranks of a torchrun that all find the demo data missing):
    one packs while the others wait on a lock in ``root`` and then find the databases there."""
    import shutil
    os.makedirs(root, exist_ok=True)
    report = {} if report is None else report
    with open(os.path.join(root, ".pack.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1000)):
            d = os.path.join(root, split)
            have = existing(root, split)
            if have is not None and not overwrite:
                report[split] = ("kept", have)
                continue
            if overwrite:
                for what in ("images", "labels"):
                    shutil.rmtree(os.path.join(d, what), ignore_errors=True)
            os.makedirs(d, exist_ok=True)
            rng = np.random.default_rng(s)
            samples = [make_sample(rng, size) for _ in range(n)]
            for what, idx in (("labels", 1), ("images", 0)):
                path = os.path.join(d, what)
                if os.path.isdir(path):
                    continue
                with LMDBWriter(path) as w:
                    for i, pair in enumerate(samples):
                        w.put(f"{i:08d}", encoded_datum(encode_image(pair[idx], "png")).SerializeToString())
            log.info("packed %d %s samples of %dx%d into %s", n, split, size, size, d)
            report[split] = ("wrote", n)
    return root


def export_images(root: str, split: str, out_dir: str) -> int:
    """Write the ``split`` images of a packed dataset as PNG files (for tools/infer.py). Returns the count."""
    from .datum import decode_datum, parse_datum
    from .lmdb_io import LMDBReader
    reader = LMDBReader(os.path.join(root, split, "images"))
    os.makedirs(out_dir, exist_ok=True)
    for i in range(len(reader)):
        chw = decode_datum(parse_datum(reader[i], key=i), key=i)
        cv2.imwrite(os.path.join(out_dir, f"{split}_{i:04d}.png"), np.ascontiguousarray(chw.transpose(1, 2, 0)))
    return len(reader)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m netspec.data.synthetic",
                                description="Generate and pack the synthetic demo segmentation dataset")
    p.add_argument("root", nargs="?", default="data/demo", help="output folder: ROOT/train and ROOT/val "
                   "(default data/demo)")
    p.add_argument("--train", type=int, default=400, help="training samples (default 400)")
    p.add_argument("--val", type=int, default=50, help="validation samples (default 50)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--overwrite", action="store_true", help="regenerate splits that are already packed")
    p.add_argument("--export-images", metavar="DIR", help="also write the val images as PNG files into DIR")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {}
    pack(a.root, a.train, a.val, a.size, a.seed, overwrite=a.overwrite, report=report)
    for split, asked in (("train", a.train), ("val", a.val)):
        what, n = report[split]
        d = os.path.join(a.root, split)
        if what == "wrote":
            print(f"wrote {n} {split} samples to {d}")
        elif n == asked:
            print(f"kept {d} ({n} samples, already packed)")
        else:
            print(f"kept {d}: it already holds {n} samples, not the {asked} asked for; "
                  "add --overwrite to regenerate it")
    if a.export_images:
        n = export_images(a.root, "val", a.export_images)
        print(f"wrote {n} val images to {a.export_images}")


if __name__ == "__main__":
    main()
