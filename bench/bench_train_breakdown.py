"""Where a training iteration goes: waiting for data, forward+backward, the solver update, the rest; for the
demo net (solvers/demo.prototxt) and FCN-8s at a small input, with 0, 1 and 2 loader workers.

    python bench/bench_train_breakdown.py                          # demo 60 its, FCN-8s 128x128 6 its
    python bench/bench_train_breakdown.py --nets fcn8s --fcn-size 160 --iters 10 --workers 0 2 [--device cuda]

Runs in a temporary directory: the demo's synthetic set is generated there (as on first use), and FCN-8s trains
on a synthetic set of the same kind at ``--fcn-size`` (PNG Datums, batch 1, through ``SegDataLayer``; the VOC
train prototxt with its data layer swapped, random weights, FCN's SGD settings). Timing wraps the calls from the
outside, no hook in the solver: the data layer's batch fetch (inline loading, or waiting for a worker), the
solver's ``forward_backward`` (minus the fetch inside it) and ``apply_update``; the rest of ``step()`` (clearing
diffs, loss bookkeeping) is "other". With ``--device cuda`` each timed call is synchronised.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.data.synthetic import pack  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402
from netspec.formats.prototxt import parse_net, read_solver  # noqa: E402
from netspec.solver.solvers import Solver  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Timers:
    def __init__(self, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.t = {"data": 0.0, "fwd+bwd": 0.0, "update": 0.0}

    def wrap(self, obj, name, key):
        fn = getattr(obj, name)

        def timed(*a, **kw):
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                self.t[key] += time.perf_counter() - t
        setattr(obj, name, timed)


def instrument(solver, device):
    tm = Timers(device)
    found = False
    for node in solver.net.module.nodes:
        m = solver.net.module.get_module(node.index)
        layer = getattr(m, "layer", None)
        if layer is not None and hasattr(layer, "_load"):  # SegDataLayer (Python)
            tm.wrap(layer, "_load", "data")
            found = True
        elif hasattr(m, "_next_batch"):  # Data, ImageData
            tm.wrap(m, "_next_batch", "data")
            found = True
    if not found:
        raise SystemExit("no data layer found to time")
    tm.wrap(solver, "forward_backward", "fwd+bwd")
    tm.wrap(solver, "apply_update", "update")
    return tm


def quiet(param):
    param.max_iter = 10 ** 6
    param.test_interval = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    param.display = 0
    del param.test_net[:], param.test_iter[:]
    return param


def demo_solver(work, device):
    os.makedirs(os.path.join(work, "prototxt"), exist_ok=True)
    if not os.path.isdir(os.path.join(work, "prototxt", "demo")):
        shutil.copytree(os.path.join(REPO, "prototxt", "demo"), os.path.join(work, "prototxt", "demo"))
    pack(os.path.join(work, "data", "demo"))
    p = quiet(read_solver(os.path.join(REPO, "solvers", "demo.prototxt")))
    return Solver(p, device=device)


def fcn8s_solver(work, size, device):
    root = os.path.join(work, f"fcn_{size}")
    pack(root, n_train=60, n_val=1, size=size)
    net = parse_net(os.path.join(REPO, "prototxt", "fcn8s_voc", "train.prototxt"))
    data = net.layer[0]
    data.python_param.module = "netspec.data.seg"
    data.python_param.layer = "SegDataLayer"
    data.python_param.param_str = repr({"source": os.path.join(root, "train"), "seed": 1337})
    p = caffe_pb2.SolverParameter(base_lr=1e-10, lr_policy="fixed", momentum=0.99, weight_decay=0.0005,
                                  type="SGD", random_seed=1)
    p.train_net_param.CopyFrom(net)
    s = Solver(quiet(p), device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for blobs in s.net.params.values():  # deploy-style zero weights would make every gradient zero
            for b in blobs:
                b._param.normal_(0, 0.01)
    return s


def measure(make, workers, kind, iters, device):
    os.environ["NETSPEC_LOADER_WORKERS"] = str(workers)
    os.environ["NETSPEC_LOADER_KIND"] = kind
    netspec.set_random_seed(1)
    solver = make()
    solver.step(2)  # warm-up: allocations, worker start
    tm = instrument(solver, device)
    t = time.perf_counter()
    solver.step(iters)
    total = time.perf_counter() - t
    del solver
    parts = dict(tm.t)
    parts["other"] = max(0.0, total - sum(parts.values()))
    parts["fwd+bwd"] -= parts["data"]  # the fetch runs inside the forward
    return total, parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["demo", "fcn8s"], choices=["demo", "fcn8s"])
    ap.add_argument("--iters", type=int, default=0, help="timed iterations (default: demo 60, fcn8s 6)")
    ap.add_argument("--fcn-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kind", default="thread", choices=["thread", "process"])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        os.chdir(work)
        try:
            for name in a.nets:
                iters = a.iters or (60 if name == "demo" else 6)
                make = (lambda: demo_solver(work, dev)) if name == "demo" else \
                    (lambda: fcn8s_solver(work, a.fcn_size, dev))
                what = "demo (64x64, batch 1)" if name == "demo" else f"FCN-8s ({a.fcn_size}x{a.fcn_size}, batch 1)"
                print(f"\n{what}, {iters} iterations, device {dev}, {torch.get_num_threads()} torch threads, "
                      f"{a.kind} workers")
                print(f"{'workers':>7s} {'ms/iter':>9s} {'data':>7s} {'fwd+bwd':>8s} {'update':>7s} {'other':>7s}")
                for w in a.workers:
                    total, parts = measure(make, w, a.kind, iters, dev)
                    share = "".join(f" {100 * parts[k] / total:6.1f}%" for k in ("data", "fwd+bwd", "update", "other"))
                    print(f"{w:7d} {1000 * total / iters:9.1f}{share}")
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    main()
