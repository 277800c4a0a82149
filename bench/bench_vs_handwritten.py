"""netspec's prototxt-built FCN-8s or Dilated FCN-2s VGG19 vs the same net written by hand in PyTorch:
forward+backward time and peak memory, measured side by side in one run, printed as ratios (target <= 1.02).

    python bench/bench_vs_handwritten.py                      # CPU, FCN-8s, 256x256, 3 interleaved iterations
    python bench/bench_vs_handwritten.py --net fcn2s_vgg19 --size 160
    python bench/bench_vs_handwritten.py --size 500 --device cuda --iters 20 [--bf16] [--channels-last]
    python bench/bench_vs_handwritten.py --memory --size 160     # CPU: peak live tensor memory of one fwd+bwd

On CUDA the peak is torch.cuda.max_memory_allocated. On the CPU (where the process RSS moves by ±30% from run to
run with the allocator's caching) ``--memory`` counts tensor storages instead: every storage an op creates during
one forward+backward is added when made and removed when freed, and the peak of that sum is reported (weights
excluded; their gradients included), along with what autograd saves for the backward pass.

The hand-written net uses the same torch ops (Conv2d, ReLU, MaxPool2d(ceil_mode=True), ConvTranspose2d,
slicing for Crop, addition for Eltwise) and receives netspec's weights, so both compute the same function
(checked before timing).
"""
import argparse
import os
import sys
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
    ap.add_argument("--net", choices=("fcn8s", "fcn2s_vgg19"), default="fcn8s")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--memory", action="store_true", help="CPU: peak live tensor memory of one fwd+bwd per net")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
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
