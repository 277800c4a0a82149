"""Solver update cost and activation-checkpointing memory on a zoo FCN, through netspec's real training path.

    python bench/bench_solver_update.py                       # FCN-8s, every solver type, 64x64 input
    python bench/bench_solver_update.py --types SGD,Adam --iters 5
    python bench/bench_solver_update.py --net deeplabv3_resnet101_idd --types SGD,Nesterov,Adam --vs-torch --iters 9

Update: seconds per ``Solver.apply_update`` (Caffe's update rule over every parameter: FCN-8s has 134M) after one
forward/backward, median of ``--iters``. A trunk frozen with lr_mult 0 is also timed for SGD (its blobs are
skipped while their history is zero). Memory: bytes of the tensors autograd keeps for the backward pass
(saved-tensor hooks, parameters excluded) in one training forward, without and with ``configure(checkpoint=True)``.
``--vs-torch``: each update is timed interleaved with the matching ``torch.optim`` rule (foreach) stepping a copy
of the same parameters from the same gradients (SGD, Nesterov, Adam, AdaGrad, RMSProp; fixed rate).
"""
import argparse
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.bench_train_gpu import train_net  # noqa: E402
from netspec import proto  # noqa: E402
from netspec.solver.solvers import Solver  # noqa: E402


def make_solver(model, size, solver_type="SGD", frozen_trunk=False):
    """The zoo model's train net on random Input data, weights random; ``frozen_trunk``: lr_mult 0 on every
    layer but the score layers (a transfer-learning head)."""
    net = train_net(model, 1, size)
    if frozen_trunk:
        for layer in net.layer:
            if not layer.name.startswith("score"):
                for spec in layer.param:
                    spec.lr_mult = 0
    sp = proto.pb2().SolverParameter()
    sp.train_net_param.CopyFrom(net)
    sp.type, sp.base_lr, sp.lr_policy, sp.weight_decay = solver_type, 1e-10, "fixed", 5e-4
    if solver_type in ("SGD", "Nesterov", "Adam"):
        sp.momentum = 0.9
    sp.display, sp.max_iter, sp.snapshot_prefix = 0, 1 << 30, ""
    solver = Solver(sp, device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for blobs in solver.net.params.values():
            for b in blobs:
                b._param.copy_(torch.randn(b._param.shape, generator=g) * 0.01)
    classes = solver.net.blobs["score"].shape[1]
    solver.net.blobs["data"].data[...] = torch.randn(1, 3, size, size, generator=g).numpy() * 50
    solver.net.blobs["label"].data[...] = torch.randint(0, classes, (1, 1, size, size), generator=g).numpy()
    return solver


TORCH_RULES = {
    "SGD": lambda ps, sp: torch.optim.SGD(ps, sp.base_lr, momentum=sp.momentum, weight_decay=sp.weight_decay,
                                         foreach=True),
    "Nesterov": lambda ps, sp: torch.optim.SGD(ps, sp.base_lr, momentum=sp.momentum, nesterov=True,
                                              weight_decay=sp.weight_decay, foreach=True),
    "Adam": lambda ps, sp: torch.optim.Adam(ps, sp.base_lr, weight_decay=sp.weight_decay, foreach=True),
    "AdaGrad": lambda ps, sp: torch.optim.Adagrad(ps, sp.base_lr, weight_decay=sp.weight_decay, foreach=True),
    "RMSProp": lambda ps, sp: torch.optim.RMSprop(ps, sp.base_lr, weight_decay=sp.weight_decay, foreach=True),
}


def time_vs_torch(s, kind, iters):
    """Median seconds of ``apply_update`` and of the matching torch.optim step, interleaved, each from the same
    gradients (restored before every call: the update overwrites the diffs)."""
    params = [lp.tensor for lp in s._params if lp.tensor.grad is not None]
    grads = [p.grad.clone() for p in params]
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    opt = TORCH_RULES[kind](copies, s.param)
    ours, theirs = [], []
    for _ in range(iters):
        for p, q, g in zip(params, copies, grads):
            p.grad, q.grad = g.clone(), g.clone()
        t0 = time.perf_counter()
        s.apply_update()
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt.step()
        theirs.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(theirs)


def _saved_bytes(solver) -> int:
    """Bytes of the activations autograd saves (the parameters it saves too are held anyway: not counted)."""
    seen = {p.untyped_storage().data_ptr() for p in solver.net.module.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        solver.net.module.zero_grad(set_to_none=True)
        solver.forward_backward()
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="fcn8s_voc")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--types", default="SGD,Nesterov,AdaGrad,RMSProp,AdaDelta,Adam")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--vs-torch", action="store_true", help="time the matching torch.optim rule beside each update")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(True)
    print(f"{a.net} at {a.size}x{a.size}, CPU threads {torch.get_num_threads()}, torch {torch.__version__}")
    for kind in a.types.split(","):
        for frozen in ([False, True] if kind == "SGD" else [False]):
            s = make_solver(a.net, a.size, kind, frozen)
            s.forward_backward()
            if a.vs_torch and not frozen and kind in TORCH_RULES:
                ours, theirs = time_vs_torch(s, kind, a.iters)
                print(f"update {kind:<24} {ours * 1e3:8.2f} ms, torch.optim {theirs * 1e3:8.2f} ms: "
                      f"{ours / theirs:.2f}x")
                continue
            times = []
            for _ in range(a.iters):
                t0 = time.perf_counter()
                s.apply_update()
                times.append(time.perf_counter() - t0)
            n = sum(lp.tensor.numel() for lp in s._params)
            label = f"{kind} (trunk lr_mult 0)" if frozen else kind
            print(f"update {label:<24} {statistics.median(times):7.3f} s   ({n / 1e6:.1f}M params)")
    s = make_solver(a.net, a.size)
    plain = _saved_bytes(s)
    s.configure(checkpoint=True)
    ckpt = _saved_bytes(s)
    print(f"saved for backward: {plain / 2**20:.1f} MiB plain, {ckpt / 2**20:.1f} MiB with checkpoint=True "
          f"({ckpt / plain:.2f}x)")


if __name__ == "__main__":
    main()
