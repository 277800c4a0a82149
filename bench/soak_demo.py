"""Soak test: train the demo solver for many iterations and watch memory and file descriptors.

Usage:
    python bench/soak_demo.py [--iters 5000] [--every 250] [--solver solvers/demo.prototxt] [--keep-snapshots]

Runs from the repository root (it chdirs there) with the Solver API, exactly as ``tools/train.py`` would:
Data layers with their prefetch threads, the test net every ``test_interval``, snapshots every ``snapshot``
iterations (written to a temporary directory unless ``--keep-snapshots``, so ``snapshots/demo`` is left
alone). Every ``--every`` iterations it samples the resident set (``VmRSS`` from /proc/self/status) and the
open file descriptors (``/proc/self/fd``), prints a table, and at the end the growth from the first sample
after warm-up (the first test pass and snapshot, or 20 % of the run) to the last one. Linux only.

A leak shows as RSS or descriptors rising steadily after warm-up; allocator noise is a few MB either way.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5000, help="iterations to run (default 5000)")
    p.add_argument("--every", type=int, default=250, help="sample every N iterations (default 250)")
    p.add_argument("--solver", default="solvers/demo.prototxt")
    p.add_argument("--keep-snapshots", action="store_true",
                   help="write snapshots where the solver says (default: a temporary directory)")
    args = p.parse_args(argv)
    os.chdir(REPO)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch
    from netspec.solver.solvers import Solver

    snap_dir = None
    solver = Solver(args.solver)
    if not args.keep_snapshots:
        snap_dir = tempfile.mkdtemp(prefix="netspec-soak-")
        solver.param.snapshot_prefix = os.path.join(snap_dir, "soak")
    solver.param.max_iter = max(solver.param.max_iter, args.iters)
    sp = solver.param
    print(f"soak: {args.solver}, {args.iters} iterations, sample every {args.every}; test every "
          f"{sp.test_interval}, snapshot every {sp.snapshot}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    samples = []
    header = f"{'iter':>6} {'time s':>8} {'it/s':>6} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'loss':>9}"
    print(header)
    print("-" * len(header))
    start = last_t = time.perf_counter()

    def sample(it, loss):
        nonlocal last_t
        now = time.perf_counter()
        rate = args.every / (now - last_t) if samples else float("nan")
        last_t = now
        row = (it, now - start, rss_mb(), open_fds(), threads(), loss)
        samples.append(row)
        print(f"{it:6d} {row[1]:8.1f} {rate:6.1f} {row[2]:8.1f} {row[3]:5d} {row[4]:7d} {loss:9.4f}", flush=True)

    sample(0, float("nan"))
    try:
        while solver.iter < args.iters:
            solver.step(min(args.every, args.iters - solver.iter))
            sample(solver.iter, solver.smoothed_loss)
    finally:
        if snap_dir is not None:
            shutil.rmtree(snap_dir, ignore_errors=True)

    warm_iter = max(sp.test_interval or 0, sp.snapshot or 0, args.iters // 5)
    warm = next((s for s in samples if s[0] >= warm_iter), samples[0])
    last = samples[-1]
    span = max(1, last[0] - warm[0])
    peak = max(s[2] for s in samples[samples.index(warm):])
    print()
    print(f"after warm-up (iter {warm[0]} -> {last[0]}, {span} iterations):")
    print(f"  RSS  {warm[2]:.1f} -> {last[2]:.1f} MB: {last[2] - warm[2]:+.1f} MB "
          f"({(last[2] - warm[2]) * 1000 / span:+.2f} MB per 1000 iterations; peak {peak:.1f} MB)")
    print(f"  fds  {warm[3]} -> {last[3]}: {last[3] - warm[3]:+d}; threads {warm[4]} -> {last[4]}: "
          f"{last[4] - warm[4]:+d}")
    print(f"  wall {last[1]:.0f} s in all ({last[0] / last[1]:.1f} it/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
