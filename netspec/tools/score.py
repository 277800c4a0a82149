"""FCN's ``score.py`` as a function: the library side of ``tools/score.py``.

``score`` accumulates the confusion matrix of argmax(score) against the label over a split -- from the net's own
data layer, or from a deploy net fed record by record from a dataset directory -- and prints score.py's metric
lines.
"""
import argparse
import functools
import logging
import math
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cli import add_net_state, add_verbosity, parse_args, progress as progress_bar, setup_logging, stages, tool_device
from ..data.classes import SIFTFLOW_CLASSES  # (also importable here, as before)
from ..data.transform import FCN_MEAN
from ..errors import DataError, NetspecError
from ..solver.metrics import fast_hist, format_class_table, format_group_scores, format_scores, group_scores, scores, seg_tests
from ..solver.seg_scores import count_records, data_layer_info  # (also importable here, as before)

log = logging.getLogger("netspec")


def known_classes() -> Dict[str, Tuple[str, ...]]:
    """Built-in class names by dataset key (``--classes demo`` etc.)."""
    from ..data.classes import CITYSCAPES_CLASSES, DEMO_CLASSES, IDD_CLASSES, KITTI_ROAD_CLASSES, VOC_CLASSES
    return OrderedDict([("demo", DEMO_CLASSES), ("voc", VOC_CLASSES), ("siftflow", SIFTFLOW_CLASSES),
                        ("kitti_road", KITTI_ROAD_CLASSES), ("idd", IDD_CLASSES),
                        ("cityscapes", CITYSCAPES_CLASSES)])


def batches_per_epoch(net, info: Optional[dict]) -> Optional[int]:
    """Batches that cover the data layer's records once: asked of the built Python data layer (its split
    list ``indices`` as the FCN layers keep it, or SegDataLayer's LMDB ``images``), else counted from the
    source (LMDB, image list)."""
    for node in net.module.nodes:
        layer = getattr(net.module.get_module(node.index), "layer", None)
        if node.type != "Python" or layer is None:
            continue
        for attr in ("indices", "images", "order"):
            seq = getattr(layer, attr, None)
            if seq is not None and hasattr(seq, "__len__"):
                return max(1, math.ceil(len(seq) / max(1, int(getattr(layer, "batch_size", 1)))))
        break
    n = count_records(info)
    return None if n is None else max(1, math.ceil(n / max(1, info["batch_size"])))


def guess_dataset(info: Optional[dict], dataset_dir: Optional[str] = None) -> Optional[str]:
    """A known-dataset key from the data source or the layer's module (demo, voc, siftflow, kitti_road, idd,
    cityscapes)."""
    text = " ".join(str(x) for x in (dataset_dir or "", (info or {}).get("source") or "",
                                     (info or {}).get("module") or "")).lower()
    if re.search(r"(?<![a-z0-9])idd(?![a-z0-9])", text):  # data/idd/val, IDD_Segmentation; not "hidden"
        return "idd"
    for key, pats in (("demo", ("demo",)), ("cityscapes", ("cityscapes",)),
                      ("siftflow", ("siftflow", "sift-flow", "sift_flow")),
                      ("kitti_road", ("kitti",)), ("voc", ("voc", "pascal", "sbd"))):
        if any(p in text for p in pats) and not (key == "voc" and "context" in text):
            return key
    return None


def load_class_names(spec: Optional[str], n: int, guess: Optional[str] = None) -> List[str]:
    """``n`` class names: from a file (one per line, or ``index name``), a known dataset key, the guessed
    dataset, else ``class_0..``. A list of the wrong length is reported and padded/cut."""
    names = None
    known = known_classes()
    if spec:
        if os.path.isfile(spec):
            names = []
            with open(spec, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    head, _, rest = line.partition(" ")
                    names.append(rest.strip() if head.isdigit() and rest.strip() else line)
        elif spec.lower() in known:
            names = list(known[spec.lower()])
        else:
            raise NetspecError(f"--classes {spec!r}: neither a file nor a known dataset ({', '.join(known)})")
    elif guess in known and len(known[guess]) == n:
        names = list(known[guess])
    if names is None:
        return [f"class_{i}" for i in range(n)]
    if len(names) != n:
        log.warning("%d class names for a %d-class score; %s", len(names), n,
                    "extra names dropped" if len(names) > n else "missing ones numbered")
        names = (names + [f"class_{i}" for i in range(len(names), n)])[:n]
    return names


def load_groups(path: str, names: Sequence[str]) -> "OrderedDict[str, List[int]]":
    """Class groups, one per line: ``group: class class ...`` (names or indices; names with spaces need
    indices). Unknown class names are an error."""
    groups: "OrderedDict[str, List[int]]" = OrderedDict()
    index = {n: i for i, n in enumerate(names)}
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if ":" not in line:
                raise DataError(f"{path}:{k}: expected 'group: class class ...'")
            g, _, members = line.partition(":")
            idx = []
            for m in members.replace(",", " ").split():
                if m.isdigit():
                    idx.append(int(m))
                elif m in index:
                    idx.append(index[m])
                else:
                    raise DataError(f"{path}:{k}: unknown class '{m}' (classes: {', '.join(names)})")
            groups[g.strip()] = idx
    return groups


def find_beside_data(name: str, *dirs) -> Optional[str]:
    """The file ``name`` (``groups.txt``, ``class_names.txt``) beside the data: in a split directory or its
    parent."""
    for d in dirs:
        if not d:
            continue
        for cand in (os.path.join(d, name), os.path.join(os.path.dirname(os.path.normpath(d)), name)):
            if os.path.isfile(cand):
                return cand
    return None


def _dataset_records(dataset: str):
    """(image BGR HxWx3 uint8, label HxW) pairs from a dataset directory: an ``images``/``labels`` LMDB pair
    (SegDataLayer's layout) or two folders of image files matched by file stem."""
    from ..data.datum import decode_datum, parse_datum
    from ..data.lmdb_io import LMDBReader
    img_dir, lab_dir = os.path.join(dataset, "images"), os.path.join(dataset, "labels")
    if not (os.path.isdir(img_dir) and os.path.isdir(lab_dir)):
        raise DataError(f"--dataset {dataset}: expected '{img_dir}' and '{lab_dir}' (LMDBs or image folders)")
    if os.path.isfile(os.path.join(img_dir, "data.mdb")):
        images, labels = LMDBReader(img_dir), LMDBReader(lab_dir)
        if len(images) != len(labels):
            raise DataError(f"{dataset}: {len(images)} images but {len(labels)} labels")

        def gen():
            for i in range(len(images)):
                img = decode_datum(parse_datum(images[i], key=i), key=i)
                lab = decode_datum(parse_datum(labels[i], key=i), key=i, force_gray=True)
                yield str(i), img[:3].transpose(1, 2, 0), lab[0]
        return len(images), gen()
    import cv2
    from .infer import list_images
    files = list_images([img_dir])
    labs = {os.path.splitext(os.path.basename(p))[0]: p for p in list_images([lab_dir])}
    missing = [f for f in files if os.path.splitext(os.path.basename(f))[0] not in labs]
    if missing:
        raise DataError(f"{dataset}: no label for {missing[0]} (labels are matched by file name stem)")

    def gen_files():
        for f in files:
            stem = os.path.splitext(os.path.basename(f))[0]
            img = cv2.imread(f, cv2.IMREAD_COLOR)
            lab = cv2.imread(labs[stem], cv2.IMREAD_UNCHANGED)
            if img is None or lab is None:
                raise DataError(f"cannot read {f} or its label {labs[stem]}")
            yield stem, img, lab if lab.ndim == 2 else lab[..., 0]
    return len(files), gen_files()


def score_deploy(net, dataset: str, layer: str, mean, scale: float, iterations: Optional[int] = None,
                 progress=None) -> np.ndarray:
    """Confusion matrix of a deploy net over a dataset directory, reshaping the input to each image."""
    from .infer import predict_scores
    n_rec, records = _dataset_records(dataset)
    n = n_rec if iterations is None else min(iterations, n_rec)
    hist = None
    it = range(n) if progress is None else progress(range(n))
    for _, (_, img, lab) in zip(it, records):
        sc = predict_scores(net, img, mean=mean, scale=scale, layer=layer)
        if hist is None:
            hist = np.zeros((sc.shape[0], sc.shape[0]), np.int64)
        pred = sc.argmax(0)
        if pred.shape != lab.shape:
            raise DataError(f"score map {pred.shape} and label {lab.shape} differ in size")
        hist += fast_hist(lab, pred, sc.shape[0])
    if hist is None:
        raise DataError(f"{dataset}: no records")
    return hist


def save_results(save_dir: str, hist: np.ndarray, s: dict, names: Sequence[str], group_rows=None) -> List[str]:
    """confusion.npy, confusion.png (row-normalised heat map), per_class.csv (IoU, accuracy, pixels),
    scores.txt. Returns the paths written."""
    from .plot_log import plot_confusion
    os.makedirs(save_dir, exist_ok=True)
    paths = []
    p = os.path.join(save_dir, "confusion.npy")
    np.save(p, hist)
    paths.append(p)
    p = os.path.join(save_dir, "confusion.png")
    plot_confusion(hist, names, p, title=f"mean IU {s['mean IU']:.4f}")
    paths.append(p)
    p = os.path.join(save_dir, "per_class.csv")
    with open(p, "w", encoding="utf-8") as f:
        f.write("index,class,iou,accuracy,gt_pixels,pred_pixels\n")
        rows, cols = hist.sum(1), hist.sum(0)
        for i, name in enumerate(names):
            f.write(f"{i},{name},{s['per_class_iu'][i]:.6f},{s['per_class_acc'][i]:.6f},{rows[i]},{cols[i]}\n")
    paths.append(p)
    p = os.path.join(save_dir, "scores.txt")
    with open(p, "w", encoding="utf-8") as f:
        f.write(format_scores(s, names) + "\n")
        if group_rows:
            f.write(format_group_scores(group_rows) + "\n")
    paths.append(p)
    return paths


def parser():
    p = argparse.ArgumentParser(prog="score.py", description="FCN segmentation metrics (overall accuracy, mean "
                                "accuracy, mean IU, fwavacc, per-class IoU) over a split.")
    p.add_argument("--model", required=True, help="val/test prototxt with a data layer, or a deploy prototxt "
                   "with --dataset")
    p.add_argument("--weights", required=True, help="trained caffemodel(s), comma-separated")
    p.add_argument("--dataset", help="for a deploy net: a directory with images/ and labels/ (LMDB pair as "
                   "SegDataLayer reads, or folders of image files matched by name)")
    p.add_argument("--iterations", type=int, help="batches to score (default: the number of records)")
    p.add_argument("--layer", default="score", help="score blob (argmax over channels) (default score)")
    p.add_argument("--gt", default="label", help="label blob for nets with a data layer (default label)")
    p.add_argument("--classes", help="class names: a file (one per line) or a known dataset: "
                   + ", ".join(known_classes()) + " (default: the class_names.txt that tools/build_seg_lmdb.py "
                   "wrote beside the data, else the dataset guessed from its path)")
    p.add_argument("--groups", help="class groups file ('group: class class ...'); default: a groups.txt "
                   "beside the data, if any")
    p.add_argument("--table", action="store_true", help="after the summary lines, a per-class table: IoU and "
                   "accuracy in percent and each class's share of the labelled pixels, then the means")
    p.add_argument("--save-dir", help="write confusion.npy, confusion.png, per_class.csv, scores.txt here")
    p.add_argument("--mean", type=float, nargs=3, metavar=("B", "G", "R"),
                   default=FCN_MEAN, help="deploy nets: BGR mean to subtract")
    p.add_argument("--scale", type=float, default=1.0, help="deploy nets: multiplier after mean subtraction")
    p.add_argument("--gpu", help="GPU id; default CPU")
    add_net_state(p)
    add_verbosity(p)
    return p


def main(argv=None, out=None) -> int:
    import sys
    args = parse_args(parser(), argv)
    import torch
    from ..net.pycaffe import TEST, Net, load_net_param  # torch: after the arguments (--help stays fast)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    out = out or sys.stdout
    try:
        device = tool_device(args.gpu)
        net_param, _ = load_net_param(args.model)
        info = data_layer_info(net_param)
        net = Net(args.model, TEST, weights=args.weights, level=args.level, stages=stages(args.stage),
                  device=device)
        if args.layer not in net.blobs:
            raise NetspecError(f"--layer {args.layer}: net '{net.name}' has no such blob "
                               f"(outputs: {', '.join(net.outputs)})")
        progress = functools.partial(progress_bar, desc="score", unit="batch")
        loss = None
        if net.inputs:  # a deploy net
            if not args.dataset:
                raise NetspecError(f"{args.model} has Input blobs ({', '.join(net.inputs)}) and no data layer: "
                                   "give --dataset DIR (with images/ and labels/)")
            log.info("Scoring %s over the images of %s", args.layer, args.dataset)
            hist = score_deploy(net, args.dataset, args.layer, args.mean, args.scale, args.iterations, progress)
        else:
            if args.gt not in net.blobs:
                raise NetspecError(f"--gt {args.gt}: net '{net.name}' has no such blob")
            iters = args.iterations
            if iters is None:
                iters = batches_per_epoch(net, info)
                if iters is None:
                    raise NetspecError("cannot tell how many records the data layer reads; give --iterations")
            log.info("Scoring %s over %d batches of %d (%d images)", args.layer, iters, info["batch_size"] if info
                     else 1, iters * (info["batch_size"] if info else 1))
            with torch.no_grad():
                hist, loss = seg_tests(net, iters, layer=args.layer, gt=args.gt, progress=progress)
            if not net.loss_outputs():
                loss = None
        n_cl = hist.shape[0]
        data_dirs = (args.dataset, (info or {}).get("source"))
        # --classes; else the class_names.txt the packer wrote beside the data; else a known dataset's names
        classes = args.classes or find_beside_data("class_names.txt", *data_dirs)
        names = load_class_names(classes, n_cl, guess_dataset(info, args.dataset))
        s = scores(hist)
        groups_file = args.groups or find_beside_data("groups.txt", *data_dirs)
        group_rows = group_scores(s, load_groups(groups_file, names)) if groups_file else None
        print(format_scores(s, names, loss=loss), file=out)
        if group_rows:
            print(format_group_scores(group_rows), file=out)
        if args.table:
            print(format_class_table(s, names, hist), file=out)
        out.flush()
        if args.save_dir:
            for p in save_results(args.save_dir, hist, s, names, group_rows):
                log.info("wrote %s", p)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    return 0
