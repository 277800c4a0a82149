"""Start-up cost (issue #19): each tool's ``--help``, and the first ``Net()`` of a process beyond ``import torch``.

    python bench/bench_startup.py [--repeats 5] [--nets a.prototxt b.prototxt ...]

Every figure comes from fresh processes (the cost is the imports and first-call work a process pays once), the
median of ``--repeats``. For a net the child process times ``import torch``, then ``import netspec`` and the
first ``Net(path, TEST)`` (random fillers, no weights), and says whether ``torch._dynamo`` got imported on the
way. Goals: ``--help`` under 0.5 s, the first Net() under 1 s beyond ``import torch``.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["train", "test", "score", "time", "infer", "convert_caffemodel", "export_onnx", "make_zoo"]
NETS = ["prototxt/demo/deploy.prototxt", "tests/data/forks/densenet/DenseNet_121.prototxt",
        "prototxt/pspnet50_ade20k/deploy.prototxt", "tests/data/forks/ssd/VGG_VOC0712_SSD_300x300_deploy.prototxt",
        "prototxt/fcn8s_voc/deploy.prototxt"]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import netspec
from netspec.net.pycaffe import Net
t2 = time.perf_counter()
Net(sys.argv[1], netspec.TEST)
t3 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "import": t2 - t1, "net": t3 - t2, "dynamo": "torch._dynamo" in sys.modules}))
"""


def help_seconds(tool: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), "--help"], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t


def first_net(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nets", nargs="*", default=NETS)
    ap.add_argument("--skip-tools", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_tools:
        print(f"{'tool --help':<58} {'median s':>9} {'/ 0.5 s':>8}")
        for tool in TOOLS:
            s = statistics.median(help_seconds(tool) for _ in range(args.repeats))
            print(f"{tool:<58} {s:9.3f} {s / 0.5:8.2f}")
    print(f"\n{'first Net()':<58} {'torch s':>8} {'import':>7} {'Net()':>7} {'beyond':>7} dynamo")
    for path in args.nets:
        runs = [first_net(path) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("torch", "import", "net")}
        beyond = statistics.median(r["import"] + r["net"] for r in runs)
        print(f"{path[-58:]:<58} {med['torch']:8.3f} {med['import']:7.3f} {med['net']:7.3f} {beyond:7.3f} "
              f"{any(r['dynamo'] for r in runs)}")


if __name__ == "__main__":
    main()
