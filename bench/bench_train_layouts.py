"""Training pass on the CPU, NCHW against NHWC (``Net.configure(channels_last=True)``), per net.

    python bench/bench_train_layouts.py prototxt/demo/deploy.prototxt prototxt/segnet_camvid/deploy.prototxt
    python bench/bench_train_layouts.py --size 128 --rounds 4 prototxt/pspnet50_ade20k/deploy.prototxt

Each net is built in TRAIN phase (BatchNorm with batch statistics) with random weights (normal, std 0.01) and a
random ``--size`` square input; one pass = the solver's forward with autograd, then backward of the sum of the
outputs. The two layouts are timed interleaved in one process; printed: best and median ms, and the NHWC / NCHW
ratio of the bests and the median of per-round ratios.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.net.pycaffe import Net  # noqa: E402


def make(path: str, size: int, channels_last: bool) -> Net:
    torch.manual_seed(0)
    net = Net(path, netspec.TRAIN)
    with torch.no_grad():
        for blobs in net.params.values():
            for b in blobs:
                b._param.normal_(0, 0.01)
    if channels_last:
        net.configure(channels_last=True)
    for name in net.inputs:
        net.blobs[name].reshape(1, 3, size, size)
        net.blobs[name].data[...] = np.random.default_rng(0).standard_normal((1, 3, size, size))
    return net


def training_pass(net: Net):
    params = [b._param for blobs in net.params.values() for b in blobs]

    def run():
        for p in params:
            p.grad = None
        with torch.enable_grad():
            env, _ = net._run_fast(retain=net.outputs)
            sum(env[o].float().sum() for o in net.outputs).backward()
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prototxt", nargs="+")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args(argv)
    print(f"CPU threads {torch.get_num_threads()}, torch {torch.__version__}, input 1x3x{a.size}x{a.size}")
    for path in a.prototxt:
        runs = {cl: training_pass(make(path, a.size, cl)) for cl in (False, True)}
        for f in runs.values():
            f()  # warm-up
        times = {cl: [] for cl in runs}
        for _ in range(a.rounds):
            for cl, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[cl].append(time.perf_counter() - t0)
        nchw, nhwc = times[False], times[True]
        per_round = sorted(b / c for b, c in zip(nhwc, nchw))
        print(f"{path}: NCHW {min(nchw) * 1e3:.1f} ms (median {sorted(nchw)[len(nchw) // 2] * 1e3:.1f}), NHWC "
              f"{min(nhwc) * 1e3:.1f} ms (median {sorted(nhwc)[len(nhwc) // 2] * 1e3:.1f}); NHWC/NCHW "
              f"{min(nhwc) / min(nchw):.3f}, median of rounds {per_round[len(per_round) // 2]:.3f}")


if __name__ == "__main__":
    main()
