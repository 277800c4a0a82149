"""Benchmark: convert a VGG16-sized (~550 MB) caffemodel to a PyTorch state dict and back.

Usage:
    python bench/bench_convert.py [--keep DIR] [--skip-back]

Writes a VGG16 deploy net (13 convs, 5 max pools, fc6 4096x25088, fc7, fc8, softmax; 138M float32 params,
random data) as a caffemodel and a prototxt in a temporary directory, then runs every step in a fresh child
process, so each peak RSS is that step's own (``VmHWM`` from /proc/self/status, and ``ru_maxrss`` from
``getrusage(RUSAGE_SELF)``; the parent stays small because Linux carries its high-water mark into ``ru_maxrss``
across fork + exec):

* ``caffemodel -> pt``: ``netspec.interop.convert.convert`` with the keys from the caffemodel's own layer list,
* ``caffemodel -> pt (prototxt)``: the same with ``--prototxt``,
* ``caffemodel -> pt (fp16)``,
* ``pt -> caffemodel``: back with the prototxt, checked byte-identical to the original (which is written the
  way Caffe's ``net.save()`` writes it).

Prints time, throughput and peak RSS (also as a ratio to the file size). Needs ~2 GB of disk and ~1.5 GB of
memory.
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

from _common import same_bytes  # noqa: E402

# VGG16 (configuration D): conv blocks (widths, convs per block), then fc6/fc7/fc8.
_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def _max_rss() -> dict:
    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru = ru if sys.platform == "darwin" else ru * 1024  # Linux reports KiB
    return {"vmhwm": hwm if hwm is not None else ru, "ru_maxrss": ru}


def generate(caffemodel: str, prototxt_path: str) -> int:
    """Write the VGG16 deploy prototxt and a caffemodel with random weights; return the parameter count."""
    import numpy as np

    from netspec.formats import binary, prototxt
    from netspec.proto import caffe_pb2

    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers_bench")
    net.layer.add(name="input", type="Input", top=["data"]).input_param.shape.add(dim=[1, 3, 224, 224])
    bottom, channels, params = "data", 3, {}
    for b, (width, n) in enumerate(_BLOCKS, start=1):
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
            layer.convolution_param.num_output = width
            layer.convolution_param.pad.append(1)
            layer.convolution_param.kernel_size.append(3)
            params[name] = [(width, channels, 3, 3), (width,)]
            net.layer.add(name=f"relu{b}_{i}", type="ReLU", bottom=[name], top=[name])
            bottom, channels = name, width
        pool = net.layer.add(name=f"pool{b}", type="Pooling", bottom=[bottom], top=[f"pool{b}"])
        pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
        pool.pooling_param.kernel_size = 2
        pool.pooling_param.stride = 2
        bottom = f"pool{b}"
    k = channels * 7 * 7
    for name, out in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        layer = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
        layer.inner_product_param.num_output = out
        params[name] = [(out, k), (out,)]
        if name != "fc8":
            net.layer.add(name=f"relu{name[2:]}", type="ReLU", bottom=[name], top=[name])
            net.layer.add(name=f"drop{name[2:]}", type="Dropout", bottom=[name], top=[name])
        bottom, k = name, out
    net.layer.add(name="prob", type="Softmax", bottom=["fc8"], top=["prob"])
    prototxt.write_text(net, prototxt_path)
    # The caffemodel as Caffe's net.save() writes it: every layer with phase TEST, blobs as stored.
    saved = caffe_pb2.NetParameter(name=net.name)
    arrays = []
    for layer in net.layer:
        out = saved.layer.add()
        out.CopyFrom(layer)
        out.phase = caffe_pb2.TEST
        blobs = []
        for shape in params.get(layer.name, []):
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(0.01)
            blobs.append(a)
        arrays.append(blobs)
    binary.write_caffemodel(caffemodel, saved, arrays)
    return sum(a.size for blobs in arrays for a in blobs)


def child(mode: str, paths: dict) -> None:
    """Run in a fresh process: one step; print one JSON line."""
    from netspec.interop import convert  # noqa: F401  (torch and netspec imported before the baseline)
    base = _max_rss()
    start = time.perf_counter()
    n = 0
    if mode == "generate":
        n = generate(paths["caffemodel"], paths["prototxt"])
    else:
        if mode == "to_pt":
            r = convert.convert(paths["caffemodel"], paths["pt"])
        elif mode == "to_pt_prototxt":
            r = convert.convert(paths["caffemodel"], paths["pt_proto"], prototxt_path=paths["prototxt"])
        elif mode == "to_pt_fp16":
            r = convert.convert(paths["caffemodel"], paths["pt16"], fp16=True)
        elif mode == "back":
            r = convert.convert(paths["pt"], paths["back"], prototxt_path=paths["prototxt"])
        else:
            raise SystemExit(f"unknown mode {mode}")
        n = r.parameters
    elapsed = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": elapsed, "values": int(n), "baseline": base["vmhwm"],
                      **_max_rss()}))


def _run(mode: str, paths: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, json.dumps(paths)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    parser.add_argument("--skip-back", action="store_true", help="skip the pt -> caffemodel step")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], json.loads(args.child[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or tmp
        os.makedirs(d, exist_ok=True)
        paths = {k: os.path.join(d, v) for k, v in (
            ("caffemodel", "vgg16.caffemodel"), ("prototxt", "vgg16_deploy.prototxt"), ("pt", "vgg16.pt"),
            ("pt_proto", "vgg16_proto.pt"), ("pt16", "vgg16_fp16.pt"), ("back", "vgg16_back.caffemodel"))}
        gen = _run("generate", paths)
        size = os.path.getsize(paths["caffemodel"])
        print(f"caffemodel: {size / 1e6:.1f} MB, {gen['values']:,} parameters, generated in {gen['seconds']:.2f} s")
        steps = [("to_pt", "caffemodel -> pt", "pt"), ("to_pt_prototxt", "caffemodel -> pt (prototxt)", "pt_proto"),
                 ("to_pt_fp16", "caffemodel -> pt (fp16)", "pt16")]
        if not args.skip_back:
            steps.append(("back", "pt -> caffemodel (prototxt)", "back"))
        for mode, label, out in steps:
            r = _run(mode, paths)
            print(f"{label:>28}: {r['seconds']:.2f} s, {size / r['seconds'] / 1e6:.0f} MB/s, "
                  f"peak RSS {r['vmhwm'] / 1e6:.0f} MB = {r['vmhwm'] / size:.2f} x file size, "
                  f"{(r['vmhwm'] - r['baseline']) / size:.2f} x above the imports "
                  f"(ru_maxrss {r['ru_maxrss'] / 1e6:.0f} MB; interpreter + imports {r['baseline'] / 1e6:.0f} MB); "
                  f"output {os.path.getsize(paths[out]) / 1e6:.1f} MB")
            if mode == "back":
                print(f"{'':>28}  back-converted caffemodel byte-identical: "
                      f"{same_bytes(paths['caffemodel'], paths['back'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
