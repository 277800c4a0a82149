"""Segmentation metrics as FCN's score.py computes them, from a confusion matrix (rows = ground truth).

overall accuracy = trace / sum; mean accuracy = nanmean(diag / rowsum); IU = diag / (rowsum + colsum - diag);
mean IU = nanmean(IU) (a class absent from both truth and prediction is NaN and left out; absent from truth
but predicted gives 0); fwavacc = sum over classes with freq > 0 of freq * IU.
"""
from typing import Dict, Optional, Sequence

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


def seg_tests(net, iterations: int, layer: str = "score", gt: str = "label", num_classes: Optional[int] = None):
    """Run ``net`` forward ``iterations`` times and accumulate the confusion of argmax(layer) vs gt."""
    hist = None
    loss = 0.0
    loss_blobs = net.loss_outputs() if hasattr(net, "loss_outputs") else []
    for _ in range(iterations):
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
