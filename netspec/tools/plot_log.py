"""Pictures of training: log curves and confusion heat maps (the library side of ``tools/plot_log.py`` and of
the ``--save-dir`` of ``tools/score.py``).
The log parser reads our logs and real Caffe glog logs alike: ``Iteration N (x iter/s, ...), loss = L`` (and
the older ``Iteration N, loss = L``), ``Iteration N, lr = R``, ``Iteration N, Testing net (#k)`` followed by
``Test net output #j: name = v``, ``Train net output #j: name = v``, and FCN score lines (``>>> ... Iteration N
mean IU v`` as score.py prints them, or a ``>>> Iteration N test net #k`` header followed by ``mean IU v``
lines as ``Solver.finish`` prints them). matplotlib (Agg backend) draws; Graphviz ``dot`` renders net graphs.
"""
import argparse
import logging
import os
import re
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import NetspecError

log = logging.getLogger("netspec")


_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|-?inf))"
_RE_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_RE_LR = re.compile(r"Iteration (\d+), lr = " + _NUM)
_RE_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_RE_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = " + _NUM)
_RE_TEST_LOSS = re.compile(r"\bTest loss: " + _NUM)
_METRICS = ("loss", "overall accuracy", "mean accuracy", "mean IU", "fwavacc")
_RE_FCN = re.compile(r">>> .*?Iteration (\d+) (" + "|".join(_METRICS) + r") " + _NUM)
_RE_FINISH = re.compile(r">>> Iteration (\d+) test net #(\d+)")
_RE_METRIC_LINE = re.compile(r"^(" + "|".join(_METRICS) + r") " + _NUM + r"\s*$")


class TrainLog:
    """Parsed series: ``train_loss`` [(iter, loss)], ``lr`` [(iter, lr)], ``train_outputs`` and
    ``test_outputs`` {name: [(iter, value)]} (names of test net k > 0 get a ``#k/`` prefix)."""

    def __init__(self):
        self.train_loss: List[Tuple[int, float]] = []
        self.lr: List[Tuple[int, float]] = []
        self.train_outputs: "OrderedDict[str, List[Tuple[int, float]]]" = OrderedDict()
        self.test_outputs: "OrderedDict[str, List[Tuple[int, float]]]" = OrderedDict()

    def empty(self) -> bool:
        return not (self.train_loss or self.lr or self.train_outputs or self.test_outputs)

    def rows(self):
        """(iteration, kind, name, value) rows, kind in train / lr / train_output / test."""
        for it, v in self.train_loss:
            yield it, "train", "loss", v
        for it, v in self.lr:
            yield it, "lr", "lr", v
        for name, pts in self.train_outputs.items():
            for it, v in pts:
                yield it, "train_output", name, v
        for name, pts in self.test_outputs.items():
            for it, v in pts:
                yield it, "test", name, v


def _f(s: str) -> float:
    return float(s)


def parse_log(lines) -> TrainLog:
    """Parse a training log (an iterable of lines, or a path)."""
    if isinstance(lines, (str, os.PathLike)):
        with open(lines, encoding="utf-8", errors="replace") as f:
            return parse_log(f.read().splitlines())
    res = TrainLog()
    last_iter = 0
    test_iter, test_net = 0, 0
    finish = None  # (iter, net) after a ">>> Iteration N test net #k" header

    def add(series, name, it, v):
        series.setdefault(name, []).append((it, v))

    for line in lines:
        m = _RE_LOSS.search(line)
        if m:
            last_iter = int(m.group(1))
            res.train_loss.append((last_iter, _f(m.group(2))))
            finish = None
            continue
        m = _RE_LR.search(line)
        if m:
            res.lr.append((int(m.group(1)), _f(m.group(2))))
            continue
        m = _RE_TESTING.search(line)
        if m:
            test_iter, test_net = int(m.group(1)), int(m.group(2))
            finish = None
            continue
        m = _RE_OUTPUT.search(line)
        if m:
            kind, name, v = m.group(1), m.group(3), _f(m.group(4))
            if kind == "Train":
                add(res.train_outputs, name, last_iter, v)
            else:
                add(res.test_outputs, name if test_net == 0 else f"#{test_net}/{name}", test_iter, v)
            continue
        m = _RE_TEST_LOSS.search(line)
        if m:
            add(res.test_outputs, "Test loss" if test_net == 0 else f"#{test_net}/Test loss", test_iter,
                _f(m.group(1)))
            continue
        m = _RE_FCN.search(line)
        if m:
            add(res.test_outputs, m.group(2), int(m.group(1)), _f(m.group(3)))
            continue
        m = _RE_FINISH.search(line)
        if m:
            finish = (int(m.group(1)), int(m.group(2)))
            continue
        if finish is not None:
            m = _RE_METRIC_LINE.match(line.strip())
            if m:
                name = m.group(1) if finish[1] == 0 else f"#{finish[1]}/{m.group(1)}"
                add(res.test_outputs, name, finish[0], _f(m.group(2)))
                continue
            if line.strip() and not line.strip().startswith("IU "):
                finish = None
    return res


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NetspecError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(pts, **kw):
    """A series of one point gets a visible marker (a line needs two)."""
    if len(pts) < 2:
        kw.setdefault("marker", "o")
        kw["ms"] = max(kw.get("ms", 0), 5)
    return kw


def robust_limits(values, spike: float = 3.0) -> Optional[Tuple[float, float]]:
    """y-limits that keep a few early spikes from squashing a curve: when the largest value is more than
    ``spike`` times the 95th percentile's distance from the minimum, the limits end a little above that
    percentile (the spike leaves the axes, its value is noted); otherwise None (matplotlib's own limits)."""
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size < 5:
        return None
    lo, hi, top = float(v.min()), float(np.percentile(v, 95)), float(v.max())
    if hi <= lo or top - lo <= spike * (hi - lo):
        return None
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + 2 * pad


def plot_log(tl: TrainLog, path: str, title: Optional[str] = None, *, log_y: bool = False) -> str:
    """Loss (train and test losses), learning rate and the other test outputs, one panel each."""
    return plot_runs([("", tl)], path, title, log_y=log_y)


def plot_runs(runs, path: str, title: Optional[str] = None, *, log_y: bool = False) -> str:
    """Several runs (``[(label, TrainLog)]``) in one picture: loss (train and test losses), learning rate and
    the other test outputs, one panel each; a run's series share its colour. The loss axis is logarithmic with
    ``log_y``; otherwise an early spike is kept off the axes (:func:`robust_limits`) and its value noted."""
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    several = len(runs) > 1
    any_lr = any(tl.lr for _, tl in runs)
    any_other = any(n for _, tl in runs for n in tl.test_outputs if "loss" not in n.lower())
    panels = ["loss"] + (["lr"] if any_lr else []) + (["test"] if any_other else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels) + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    loss_values, spikes = [], []
    for r, (label, tl) in enumerate(runs):
        c = colours[r % len(colours)] if several else None
        pre = f"{label}: " if several else ""
        losses = OrderedDict((n, p) for n, p in tl.test_outputs.items() if "loss" in n.lower())
        others = OrderedDict((n, p) for n, p in tl.test_outputs.items() if n not in losses)
        for ax, panel in zip(axes, panels):
            if panel == "loss":
                if tl.train_loss:
                    it, v = zip(*tl.train_loss)
                    ax.plot(it, v, **_style(tl.train_loss, label=pre + "train loss", lw=1, color=c))
                    loss_values += list(v)
                    spikes += list(tl.train_loss)
                for n, pts in losses.items():
                    it, v = zip(*pts)
                    ax.plot(it, v, "o--" if several else "o-", ms=3 if len(pts) > 1 else 5, color=c,
                            label=pre + (f"test {n}" if not n.startswith("Test") else n))
                    loss_values += list(v)
                    spikes += list(pts)
            elif panel == "lr" and tl.lr:
                it, v = zip(*tl.lr)
                ax.plot(it, v, **_style(tl.lr, color=c or "tab:green", lw=1, label=pre + "lr",
                                        drawstyle="steps-post"))
            elif panel == "test":
                for n, pts in others.items():
                    it, v = zip(*pts)
                    ax.plot(it, v, "o-", ms=3 if len(pts) > 1 else 5, label=pre + n,
                            color=c if len(others) == 1 else None)
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            ax.set_ylabel("loss")
            if not loss_values:
                ax.text(0.5, 0.5, "no loss lines found", ha="center", va="center", transform=ax.transAxes)
            elif log_y and all(x > 0 for x in loss_values if np.isfinite(x)):
                ax.set_yscale("log")
            else:
                lim = robust_limits(loss_values)
                if lim is not None:
                    ax.set_ylim(*lim)
                    it, top = max(spikes, key=lambda p: p[1] if np.isfinite(p[1]) else -np.inf)
                    ax.text(0.99, 0.97, f"off the axes: up to {top:.4g} (iteration {it}); --log-y shows all",
                            ha="right", va="top", fontsize=7, transform=ax.transAxes)
        elif panel == "lr":
            v = [x for _, tl in runs for _, x in tl.lr]
            if v and all(x > 0 for x in v) and max(v) / min(v) > 20:
                ax.set_yscale("log")
            ax.set_ylabel("learning rate")
        else:
            ax.set_ylabel("test outputs")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("iteration")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_csv(tl: TrainLog, path: str) -> str:
    """Long-format CSV: iteration,kind,name,value."""
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "kind", "name", "value"])
        for row in tl.rows():
            w.writerow([row[0], row[1], row[2], repr(row[3])])
    return path


def plot_confusion(hist: np.ndarray, names: Sequence[str], path: str, title: Optional[str] = None) -> str:
    """Row-normalised confusion matrix (rows = ground truth) as a heat map; counts-free, values in [0, 1]."""
    plt = _pyplot()
    hist = np.asarray(hist, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = hist / hist.sum(1, keepdims=True)
    norm = np.nan_to_num(norm)
    n = len(names)
    size = min(20.0, max(4.0, 0.35 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of ground-truth pixels")
    if n <= 60:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        fs = 9 if n <= 25 else 6
        ax.set_xticklabels(names, rotation=90, fontsize=fs)
        ax.set_yticklabels(names, fontsize=fs)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parser():
    p = argparse.ArgumentParser(prog="plot_log.py", description="Plot loss, learning rate and test outputs from "
                                "training logs (ours or Caffe's glog output); several logs are compared in one "
                                "picture.")
    p.add_argument("log", nargs="+", help="training log file(s); give several to compare runs (a name=PATH "
                   "argument labels a run NAME, default: the file name)")
    p.add_argument("--out", "-o", help="PNG to write (default: <log>.png for one log, compare.png beside the "
                   "first log for several)")
    p.add_argument("--csv", help="also write the parsed series as CSV (run,iteration,kind,name,value for several "
                   "logs; iteration,kind,name,value for one)")
    p.add_argument("--title", help="plot title (default: the log's file name)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis (default: linear, with early "
                   "spikes kept off the axes)")
    return p


def main(argv=None, out=None) -> int:
    import sys
    args = parser().parse_args(argv)
    out = out or sys.stdout
    logs = list(args.log)
    # compatibility: `plot_log.py LOG OUT.png` (the picture as a second positional argument)
    if args.out is None and len(logs) == 2 and logs[1].lower().endswith((".png", ".svg", ".pdf", ".jpg")):
        args.out = logs.pop()
    runs = []
    for spec in logs:
        label, path = (spec.split("=", 1) if "=" in spec and not os.path.isfile(spec) else (None, spec))
        if not os.path.isfile(path):
            print(f"error: {path}: no such file", file=sys.stderr)
            return 1
        tl = parse_log(path)
        if tl.empty():
            print(f"error: {path}: no 'Iteration N ..., loss = L', 'lr = R' or 'Test net output' lines found",
                  file=sys.stderr)
            return 1
        runs.append((label or os.path.splitext(os.path.basename(path))[0], tl, path))
    if len(runs) == 1:
        png = args.out or os.path.splitext(runs[0][2])[0] + ".png"
        title = args.title or os.path.basename(runs[0][2])
    else:
        png = args.out or os.path.join(os.path.dirname(runs[0][2]), "compare.png")
        title = args.title or " vs ".join(r[0] for r in runs)
    try:
        plot_runs([(label, tl) for label, tl, _ in runs], png, title, log_y=args.log_y)
    except NetspecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for label, tl, _ in runs:
        print(f"wrote {png}{' (' + label + ')' if len(runs) > 1 else ''} ({len(tl.train_loss)} loss points, "
              f"{len(tl.lr)} lr points, {sum(len(v) for v in tl.test_outputs.values())} test values)", file=out)
    if args.csv:
        if len(runs) == 1:
            write_csv(runs[0][1], args.csv)
        else:
            import csv
            with open(args.csv, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["run", "iteration", "kind", "name", "value"])
                for label, tl, _ in runs:
                    for row in tl.rows():
                        w.writerow([label, row[0], row[1], row[2], repr(row[3])])
        print(f"wrote {args.csv}", file=out)
    return 0
