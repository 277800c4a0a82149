"""Peak memory of a snapshot (caffemodel + solverstate + trainstate) against the parameters and solver history.

    python bench/bench_snapshot_memory.py [--mparams 64]

Builds an SGD solver over one InnerProduct layer of about ``--mparams`` million float32 parameters (history: as
many again), then snapshots it, sampling the process RSS every millisecond. Prints the peak RSS above the
process's size before the net was built, as a ratio to params + history (issue #18: at most 1.2; writing the
solverstate through one protobuf message used to take about 6x).
"""
import argparse
import os
import tempfile
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_snapshot_memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--mparams", type=int, default=64, help="millions of parameters (default: %(default)s)")
    args = p.parse_args(argv)
    import torch  # noqa: F401  (its own memory is not the snapshot's)
    from netspec.formats import prototxt
    from netspec.solver.solvers import Solver
    side = int((args.mparams * 1e6) ** 0.5)
    net = (f'layer {{ name: "in" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 1 dim: {side} }} '
           f'shape {{ dim: 1 dim: {side} }} }} }}\n'
           f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param {{ num_output: {side} '
           'bias_term: false } }\nlayer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }')
    with tempfile.TemporaryDirectory() as d:
        sp = prototxt.parse_solver(f'base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 1 display: 0 '
                                   f'snapshot_prefix: "{d}/s"')
        sp.net_param.CopyFrom(prototxt.parse_net(net))
        before = rss()
        s = Solver(sp, device="cpu")
        payload = sum(t.numel() * 4 for t in s.net.module.parameters()) + sum(h.numel() * 4 for h in s.history)
        built = rss()
        peak, done = [built], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)
        t = threading.Thread(target=sample)
        t.start()
        t0 = time.perf_counter()
        s.snapshot()
        secs = time.perf_counter() - t0
        done.set()
        t.join()
        sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d)) if not f.endswith(".lock")}
    print(f"params + history: {payload / 2**20:.0f} MiB; files: " +
          ", ".join(f"{f} {n / 2**20:.0f} MiB" for f, n in sizes.items()))
    print(f"RSS above the process before the net: {(built - before) / 2**20:.0f} MiB once built "
          f"({(built - before) / payload:.2f} x params + history; fillers' temporaries included), peak during the "
          f"snapshot {(peak[0] - before) / 2**20:.0f} MiB = {(peak[0] - before) / payload:.2f} x; the snapshot "
          f"itself added {(peak[0] - built) / 2**20:.0f} MiB ({secs:.2f} s)")


if __name__ == "__main__":
    main()
