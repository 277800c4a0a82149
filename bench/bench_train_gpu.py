"""Training speed, peak memory and model FLOP utilisation of the zoo's FCN nets, through netspec's real
training path (Solver.step: forward, backward, Caffe's SGD update), per precision/layout/compile setting.

    python bench/bench_train_gpu.py                                   # CUDA: all nets, batch 1 and 8, all modes
    python bench/bench_train_gpu.py --nets fcn8s_voc --batch 1 --modes fp32,bf16 --iters 10
    python bench/bench_train_gpu.py --device cpu --size 64 --iters 2  # the same on CPU (a smoke run)

Modes: fp32, bf16 (autocast), bf16_cl (+ channels_last), bf16_cl_compile (+ torch.compile), bf16_cl_ckpt
(+ activation checkpointing instead of compile: the memory-saving setting). The data layer is
replaced by Input layers fed with random images and labels of the given batch and size (the loader is measured
by bench_loader.py). MFU = FLOPs of one training iteration (counted by torch.utils.flop_counter on the real
graph: forward + backward) / iteration time / the bf16 matmul peak measured on this device in this run.
Peak memory at batch 1 is printed beside the FCN papers' Caffe figures (FCN-8s 3759 MB, Dilated FCN-2s VGG16
3093 MB, VGG19 3367 MB).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from netspec import proto
from netspec.authoring import zoo  # noqa: E402
from netspec.solver.solvers import Solver  # noqa: E402

#: Peak training memory of Caffe at batch 1 as published (MB), for the batch-1 ratio.
CAFFE_MB = {"fcn8s_voc": 3759, "fcn2s_vgg16_voc": 3093, "fcn2s_vgg19_voc": 3367}
MODES = {
    "fp32": dict(precision="fp32", channels_last=False, compile=False),
    "bf16": dict(precision="bf16", channels_last=False, compile=False),
    "bf16_cl": dict(precision="bf16", channels_last=True, compile=False),
    "bf16_cl_compile": dict(precision="bf16", channels_last=True, compile=True),
    "bf16_cl_ckpt": dict(precision="bf16", channels_last=True, compile=False, checkpoint=True),
}


def train_net(model: str, batch: int, size: int):
    """The zoo model's train net with its data layer replaced by Input layers (data, label)."""
    net = zoo.net(model, "train")
    pb = proto.pb2()
    out = pb.NetParameter(name=net.name)
    for layer in net.layer:
        if layer.type == "Python" and not layer.bottom:
            for top in layer.top:
                shape = [batch, 3 if top == "data" else 1, size, size]
                out.layer.add(name=f"input_{top}", type="Input", top=[top],
                              input_param=pb.InputParameter(shape=[pb.BlobShape(dim=shape)]))
        else:
            out.layer.add().CopyFrom(layer)
    return out


def make_solver(model, batch, size, device, mode):
    sp = proto.pb2().SolverParameter()
    sp.train_net_param.CopyFrom(train_net(model, batch, size))
    sp.base_lr, sp.lr_policy, sp.momentum, sp.weight_decay = 1e-10, "fixed", 0.99, 5e-4
    sp.display, sp.max_iter, sp.snapshot_prefix = 0, 1 << 30, ""
    solver = Solver(sp, device=device)
    g = torch.Generator().manual_seed(0)
    for blobs in solver.net.params.values():
        for b in blobs:
            with torch.no_grad():
                b._param.copy_(torch.randn(b._param.shape, generator=g) * 0.01)
    n_classes = solver.net.blobs["score"].shape[1]
    solver.net.blobs["data"].data[...] = np.random.RandomState(0).randn(batch, 3, size, size) * 50
    solver.net.blobs["label"].data[...] = np.random.RandomState(1).randint(0, n_classes, (batch, 1, size, size))
    solver.configure(**MODES[mode])
    return solver


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype=torch.bfloat16, n=8192, reps=20):
    """Measured dense matmul FLOP/s on this device (the denominator of MFU)."""
    if device.type != "cuda":
        n, reps = 1024, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def iteration_flops(solver):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        solver.forward_backward()
    solver.net.clear_param_diffs()
    return counter.get_total_flops()


def measure(solver, device, iters, warmup):
    """Median seconds per Solver.step(1), peak memory (MiB), and the update's share of an iteration."""
    solver.step(warmup)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, updates = [], []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        solver.step(1)
        sync(device)
        times.append(time.perf_counter() - t0)
    for _ in range(max(1, iters // 2)):  # the update alone, on the grads of the last iteration
        sync(device)
        t0 = time.perf_counter()
        solver.apply_update()
        sync(device)
        updates.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak, statistics.median(updates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="fcn8s_voc,fcn2s_vgg16_voc,fcn2s_vgg19_voc")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    peak = matmul_peak(device)
    print(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s")
    print(f"{'net':18s} {'batch':>5s} {'mode':16s} {'ms/iter':>9s} {'iter/s':>7s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'update':>7s} {'peak MiB':>9s} {'vs Caffe':>8s}")
    for model in a.nets.split(","):
        for batch in (int(b) for b in a.batch.split(",")):
            flops = None
            for mode in a.modes.split(","):
                try:
                    solver = make_solver(model, batch, a.size, device, mode)
                    if flops is None:
                        flops = iteration_flops(solver)
                    sec, mib, upd = measure(solver, device, a.iters, a.warmup)
                except torch.OutOfMemoryError:
                    print(f"{model:18s} {batch:5d} {mode:16s} out of memory")
                    continue
                finally:
                    solver = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rate = flops / sec
                vs = f"{mib / CAFFE_MB[model]:.2f}" if batch == 1 and model in CAFFE_MB and mib == mib else "-"
                print(f"{model:18s} {batch:5d} {mode:16s} {sec * 1e3:9.1f} {1 / sec:7.2f} {rate / 1e12:8.2f} "
                      f"{rate / peak:6.1%} {upd / sec:7.1%} {mib:9.0f} {vs:>8s}", flush=True)


if __name__ == "__main__":
    main()
