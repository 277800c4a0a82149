"""Benchmark: read and write a VGG16-sized (~550 MB) caffemodel.

Usage:
    python bench/bench_caffemodel_io.py [--keep DIR] [--no-protobuf]

Generates a caffemodel with VGG16's layer shapes (13 convs, fc6 4096x25088, fc7, fc8;
138M float32 params, random data) in a temporary directory with
``netspec.formats.binary.write_caffemodel`` and reads it back, every step in a fresh child
process so each peak RSS (``VmHWM`` from /proc/self/status, else
``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that step's own:

* ``read_caffemodel`` (mmap walk, float data straight into numpy),
* for comparison, a plain ``caffe_pb2.NetParameter.FromString`` of the whole file plus a
  numpy conversion of every blob (what most converters do),
* ``write_caffemodel`` of what ``read_caffemodel`` returned (time of the write only; the
  peak includes the read), checked byte-identical to the original.

Prints time and peak RSS, also as a ratio to the file size. Heavy: ~0.6 GB on disk and a
few GB of memory for the protobuf comparison.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from netspec.formats import binary  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402

from _common import same_bytes  # noqa: E402

# VGG16 (ILSVRC 2014, configuration D): (name, type, weight shape).
VGG16 = [
    ("conv1_1", (64, 3, 3, 3)), ("conv1_2", (64, 64, 3, 3)),
    ("conv2_1", (128, 64, 3, 3)), ("conv2_2", (128, 128, 3, 3)),
    ("conv3_1", (256, 128, 3, 3)), ("conv3_2", (256, 256, 3, 3)),
    ("conv3_3", (256, 256, 3, 3)),
    ("conv4_1", (512, 256, 3, 3)), ("conv4_2", (512, 512, 3, 3)),
    ("conv4_3", (512, 512, 3, 3)),
    ("conv5_1", (512, 512, 3, 3)), ("conv5_2", (512, 512, 3, 3)),
    ("conv5_3", (512, 512, 3, 3)),
    ("fc6", (4096, 25088)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
]


def _max_rss_bytes() -> int:
    """Peak RSS of this process. ``ru_maxrss`` survives fork + exec on Linux (a child
    starts with its parent's high-water mark), so the parent of the measured children
    keeps nothing big in memory; ``VmHWM`` (per address space) is preferred when present."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def generate(path: str) -> None:
    """Write the VGG16-shaped caffemodel (layer by layer: conv/fc with ReLU between)."""
    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers_bench")
    net.layer.add(name="input", type="Input", top=["data"]).input_param.shape.add(
        dim=[1, 3, 224, 224])
    arrays = [[]]
    bottom = "data"
    for name, shape in VGG16:
        kind = "InnerProduct" if name.startswith("fc") else "Convolution"
        layer = net.layer.add(name=name, type=kind, bottom=[bottom], top=[name],
                              phase=caffe_pb2.TEST)
        if kind == "Convolution":
            layer.convolution_param.num_output = shape[0]
            layer.convolution_param.pad.append(1)
            layer.convolution_param.kernel_size.append(3)
        else:
            layer.inner_product_param.num_output = shape[0]
        weights = rng.standard_normal(shape, dtype=np.float32)
        weights *= np.float32(0.01)
        arrays.append([weights, rng.standard_normal(shape[0], dtype=np.float32)])
        net.layer.add(name=f"relu_{name}", type="ReLU", bottom=[name], top=[name],
                      phase=caffe_pb2.TEST)
        arrays.append([])
        bottom = name
    binary.write_caffemodel(path, net, arrays)


def child(path: str, mode: str) -> None:
    """Run in a fresh process: one step on ``path``; print a JSON result line."""
    base = _max_rss_bytes()
    start = time.perf_counter()
    n = 0
    if mode == "generate":
        generate(path)
    elif mode == "netspec":
        model = binary.read_caffemodel(path)
        n = sum(a.size for arrays in model.blobs for a in arrays)
    elif mode == "protobuf":
        with open(path, "rb") as f:
            net = caffe_pb2.NetParameter.FromString(f.read())
        arrays = [np.array(b.data, dtype=np.float32) for layer in net.layer for b in layer.blobs]
        n = sum(a.size for a in arrays)
    elif mode == "rewrite":
        model = binary.read_caffemodel(path)
        start = time.perf_counter()  # time the write only
        binary.write_caffemodel(path + ".rewritten", model)
        n = sum(a.size for arrays in model.blobs for a in arrays)
    elapsed = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": elapsed, "max_rss": _max_rss_bytes(),
                      "rusage_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "baseline_rss": base, "values": int(n)}))


def _run_child(path: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path, mode],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="write the model here and keep it")
    parser.add_argument("--no-protobuf", action="store_true",
                        help="skip the plain-protobuf comparison (needs ~3 GB)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or tmp
        path = os.path.join(directory, "vgg16_bench.caffemodel")
        gen = _run_child(path, "generate")
        size = os.path.getsize(path)
        print(f"file: {size / 1e6:.1f} MB ({size} bytes), generated + written in "
              f"{gen['seconds']:.2f} s")
        modes = ["netspec"] + ([] if args.no_protobuf else ["protobuf"]) + ["rewrite"]
        labels = {"netspec": "read_caffemodel", "protobuf": "protobuf FromString + numpy",
                  "rewrite": "write_caffemodel"}
        for mode in modes:
            r = _run_child(path, mode)
            print(f"{labels[mode]:>28}: {r['seconds']:.2f} s, "
                  f"{size / r['seconds'] / 1e6:.0f} MB/s, peak RSS {r['max_rss'] / 1e6:.0f} MB "
                  f"= {r['max_rss'] / size:.2f} x file size (ru_maxrss "
                  f"{r['rusage_max_rss'] / 1e6:.0f} MB; interpreter + imports "
                  f"{r['baseline_rss'] / 1e6:.0f} MB)")
        if mode == "rewrite":
            same = same_bytes(path, path + ".rewritten")
            print(f"{'':>28}  rewritten file byte-identical: {same}")
            if not args.keep:
                os.unlink(path + ".rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
