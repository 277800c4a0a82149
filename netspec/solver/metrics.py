"""Segmentation metrics as FCN's score.py computes them, from a confusion matrix (rows = ground truth).

overall accuracy = trace / sum; mean accuracy = nanmean(diag / rowsum); IU = diag / (rowsum + colsum - diag);
mean IU = nanmean(IU) (a class absent from both truth and prediction is NaN and left out; absent from truth
but predicted gives 0); fwavacc = sum over classes with freq > 0 of freq * IU.
"""
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def fast_hist(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Confusion counts of valid pixels (0 <= gt < n; ignore labels such as 255 drop out)."""
    gt = np.asarray(gt).astype(np.int64).reshape(-1)
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    k = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[k] + pred[k], minlength=n * n).reshape(n, n)


def scores(hist: np.ndarray) -> Dict[str, object]:
    hist = np.asarray(hist, dtype=np.float64)
    diag, rows, cols = np.diag(hist), hist.sum(1), hist.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag.sum() / hist.sum()
        per_class_acc = diag / rows
        iu = diag / (rows + cols - diag)
    freq = rows / hist.sum()
    return {
        "overall accuracy": float(acc),
        "mean accuracy": float(np.nanmean(per_class_acc)),
        "mean IU": float(np.nanmean(iu)),
        "fwavacc": float((freq[freq > 0] * iu[freq > 0]).sum()),
        "per_class_iu": iu,
        "per_class_acc": per_class_acc,
    }


def format_scores(s: Dict[str, object], class_names: Optional[Sequence[str]] = None,
                  loss: Optional[float] = None) -> str:
    """score.py's lines (``mean IU 0.6551``), then per-class IoU when names are given."""
    lines = []
    if loss is not None:
        lines.append(f"loss {loss:.4f}")
    for k in ("overall accuracy", "mean accuracy", "mean IU", "fwavacc"):
        lines.append(f"{k} {s[k]:.4f}")
    if class_names is not None:
        for name, v in zip(class_names, s["per_class_iu"]):
            lines.append(f"IU {name} {v:.4f}" if not np.isnan(v) else f"IU {name} nan")
    return "\n".join(lines)


def format_class_table(s: Dict[str, object], class_names: Sequence[str], hist: Optional[np.ndarray] = None) -> str:
    """Per-class scores as papers print them: one row per class with its IoU and accuracy in percent (and,
    given the confusion ``hist``, its share of the labelled pixels), then a ``mean`` row (mean IU and mean
    accuracy over the classes that count, as :func:`scores`). ``n/a``: absent from truth and prediction."""
    iu = np.asarray(s["per_class_iu"], np.float64)
    acc = np.asarray(s["per_class_acc"], np.float64)
    share = None
    if hist is not None:
        rows = np.asarray(hist, np.float64).sum(1)
        share = rows / max(rows.sum(), 1.0)
    width = max([len("class"), len("mean")] + [len(n) for n in class_names])

    def pct(v):
        return f"{'n/a':>7}" if np.isnan(v) else f"{100.0 * v:7.2f}"

    head = f"{'#':>3}  {'class':<{width}}  {'IoU %':>7}  {'acc %':>7}"
    lines = [head + (f"  {'share %':>7}" if share is not None else "")]
    for c, name in enumerate(class_names):
        lines.append(f"{c:3d}  {name:<{width}}  {pct(iu[c])}  {pct(acc[c])}"
                     + (f"  {100.0 * share[c]:7.2f}" if share is not None else ""))
    lines.append(f"{'':3}  {'mean':<{width}}  {pct(s['mean IU'])}  {pct(s['mean accuracy'])}")
    return "\n".join(lines)


def seg_tests(net, iterations: int, layer: str = "score", gt: str = "label", num_classes: Optional[int] = None,
              progress=None):
    """Run ``net`` forward ``iterations`` times and accumulate the confusion of argmax(layer) vs gt.

    ``progress``, when given, wraps the iteration range (e.g. ``functools.partial(tqdm, desc=...)``)."""
    hist = None
    loss = 0.0
    loss_blobs = net.loss_outputs() if hasattr(net, "loss_outputs") else []
    steps = range(iterations) if progress is None else progress(range(iterations))
    for _ in steps:
        if hasattr(net, "forward_only"):
            net.forward_only(retain=(layer, gt))
        else:
            net.forward()
        score = net.blobs[layer].data
        n = num_classes or score.shape[1]
        if hist is None:
            hist = np.zeros((n, n), np.int64)
        pred = score.argmax(1)
        hist += fast_hist(net.blobs[gt].data.reshape(pred.shape), pred, n)
        loss += sum(float(net.blobs[o].data.sum()) * w for o, w in loss_blobs)
    return hist, loss / max(1, iterations)


def group_scores(s: Dict[str, object], groups: Mapping[str, Sequence[int]]) -> List[Tuple[str, float, float]]:
    """Per group of classes: (name, mean IU, mean accuracy) -- nanmean over the group's classes, so the
    NaN rules of ``scores`` carry over (a class absent from truth and prediction is left out)."""
    iu = np.asarray(s["per_class_iu"], np.float64)
    acc = np.asarray(s["per_class_acc"], np.float64)
    out = []
    for name, members in groups.items():
        idx = [int(i) for i in members if 0 <= int(i) < len(iu)]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN group: nanmean says so with a warning
            m_iu = float(np.nanmean(iu[idx])) if idx else float("nan")
            m_acc = float(np.nanmean(acc[idx])) if idx else float("nan")
        out.append((name, m_iu, m_acc))
    return out


def format_group_scores(rows) -> str:
    """``group <name> mean IU 0.6551 mean accuracy 0.7012`` lines."""
    return "\n".join(f"group {name} mean IU {iu:.4f} mean accuracy {acc:.4f}" for name, iu, acc in rows)
