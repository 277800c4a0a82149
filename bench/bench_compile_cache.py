"""Frozen compiled inference with the persistent compile cache (issue #19): cold compile time, warm (second
process) load time, and steady-state time against OpenCV 4 dnn's Caffe importer on the same deploy prototxt and
caffemodel, per activation layout.

    python bench/bench_compile_cache.py --model deploy.prototxt --weights W.caffemodel --size 224
    python bench/bench_compile_cache.py ... --layouts contiguous,channels_last --iters 30 --threads 2

For each layout two fresh processes run the same script (``--child``) against one empty cache folder: the first
compiles (torch.export + AOTInductor, netspec.net.compile_cache) and stores the package, the second loads it.
Each reports the setup time (imports, net build, weights), the first call (compile or load + one forward), the
largest difference from the eager net, and interleaved steady-state medians of netspec's ``forward_only()`` and
OpenCV's setInput + forward (same thread count for both: torch.set_num_threads, cv2.setNumThreads).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

T0 = time.perf_counter()


def child(args) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.src)
    import netspec
    from netspec.net.pycaffe import Net
    net = Net(args.model, netspec.TEST, weights=args.weights)
    inp, out = net.inputs[0], net.outputs[-1]
    x = np.random.RandomState(0).rand(1, 3, args.size, args.size).astype(np.float32) * 255 - 128
    net.blobs[inp].reshape(*x.shape)
    net.blobs[inp].data[...] = x
    eager = net.forward_only(fold=False)[out].copy()
    net.configure(compile=True, freeze=True, channels_last=args.layout == "channels_last", cache_dir=args.cache)
    setup = time.perf_counter() - T0
    t = time.perf_counter()
    got = net.forward_only()[out].copy()
    first = time.perf_counter() - t
    aot = net._aot
    res = {"layout": args.layout, "setup_s": setup, "first_call_s": first,
           "event": aot.last_event if aot and aot.failed is None else f"fallback: {aot.failed if aot else '-'}",
           "max_abs_diff_vs_eager": float(np.abs(got - eager).max())}
    import cv2
    cv2.setNumThreads(args.threads)
    cvnet = cv2.dnn.readNetFromCaffe(args.model, args.weights)

    def run_cv():
        cvnet.setInput(x)
        return cvnet.forward()

    def run_ns():
        net.blobs[inp].data[...] = x
        return net.forward_only()[out]
    res["max_abs_diff_vs_opencv"] = float(np.abs(run_cv().reshape(got.shape) - got).max())
    for f in (run_cv, run_ns, run_cv, run_ns):  # warm-up
        f()
    times = {"opencv": [], "netspec": []}
    for i in range(args.iters):
        for name, f in (("opencv", run_cv), ("netspec", run_ns)) if i % 2 else (("netspec", run_ns),
                                                                               ("opencv", run_cv)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        res[f"{name}_ms"] = 1000 * float(np.median(ts))
    res["ratio"] = res["netspec_ms"] / res["opencv_ms"]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=30, help="timed calls per side (interleaved)")
    p.add_argument("--layouts", default="contiguous,channels_last")
    p.add_argument("--cache", help="cache folder (default: a fresh temporary folder per layout)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="contiguous", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    print(f"uptime: {os.popen('uptime').read().strip()}")
    # The children import a copy of the package taken now: edits to the working tree during the run (the package
    # key covers netspec's forward sources) would otherwise turn the warm run into a second compile.
    src = tempfile.mkdtemp(prefix="netspec_src_")
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "netspec"),
                    os.path.join(src, "netspec"), ignore=shutil.ignore_patterns("__pycache__"))
    for layout in args.layouts.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cache = args.cache or tmp
            for run in ("cold", "warm"):
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--layout", layout, "--cache", cache,
                       "--model", args.model, "--weights", args.weights, "--size", str(args.size),
                       "--threads", str(args.threads), "--iters", str(args.iters), "--src", src]
                done = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not line:
                    print(done.stdout[-2000:], done.stderr[-4000:])
                    return 1
                r = json.loads(line[-1][7:])
                print(f"{layout:13s} {run}: setup {r['setup_s']:.1f} s, first call {r['first_call_s']:.2f} s "
                      f"({r['event']}), steady {r['netspec_ms']:.1f} ms vs OpenCV {r['opencv_ms']:.1f} ms "
                      f"(ratio {r['ratio']:.2f}), max |diff| vs eager {r['max_abs_diff_vs_eager']:.1e}, "
                      f"vs OpenCV {r['max_abs_diff_vs_opencv']:.1e}", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    shutil.rmtree(src, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
