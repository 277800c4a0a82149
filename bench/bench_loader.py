"""Data loader throughput: a Data layer over JPEG-encoded 500x375 Datums and a SegDataLayer over JPEG images with
PNG labels, with crop 321 + mirror (TRAIN), loaded inline and by 1, 2, ... worker threads or processes.

    python bench/bench_loader.py                                  # 200 images, batch 10, workers 0 1 2
    python bench/bench_loader.py --images 400 --batches 30 --rounds 5 --workers 0 1 2 4 8 [--device cuda]

Writes the datasets into a temporary directory (synthetic textured images, JPEG quality 95), then measures
images/s of the layer's forward with no net behind it (the most a loader can deliver), in interleaved rounds
(every configuration once per round, so load from other processes hits them alike) and prints the medians,
the ratio to inline loading, and the CPU time spent per image (all threads and worker processes: the cost of
each way of loading, which decides when the cores are busy anyway). Every configuration is first checked to
give the same batches as inline. With ``--device cuda`` batches are copied to the GPU (pinned memory,
non-blocking copies) and synchronised.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.data.datum import encode_image, encoded_datum  # noqa: E402
from netspec.data.lmdb_io import LMDBWriter  # noqa: E402
from netspec.net.pycaffe import Net  # noqa: E402

H, W = 375, 500


def synthetic_pair(rng):
    """A 375x500 BGR image with smooth structure, edges and noise (JPEG-compresses like a photo), and a label."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.empty((H, W, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        img[..., c] = 128 + 70 * np.sin(xx * fx + ph) * np.cos(yy * fy)
    label = np.zeros((H, W), np.uint8)
    for k in range(int(rng.integers(2, 6))):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(20, 90)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        label[m] = 1 + k % 20
        img[m] += rng.uniform(-60, 60, 3).astype(np.float32)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_datasets(root, n):
    rng = np.random.default_rng(0)
    pairs = [synthetic_pair(rng) for _ in range(n)]
    jpegs = [encode_image(p[0], "jpg") for p in pairs]
    with LMDBWriter(os.path.join(root, "data_lmdb")) as w:
        for i, j in enumerate(jpegs):
            w.put(f"{i:08d}", encoded_datum(j, label=i % 21).SerializeToString())
    for what, blobs in (("images", jpegs), ("labels", [encode_image(p[1], "png") for p in pairs])):
        with LMDBWriter(os.path.join(root, "seg", what)) as w:
            for i, b in enumerate(blobs):
                w.put(f"{i:08d}", encoded_datum(b).SerializeToString())
    return sum(len(j) for j in jpegs) / n


def data_net(root, batch):
    p = os.path.join(root, "data.prototxt")
    with open(p, "w") as f:
        f.write(f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
                f'transform_param {{ crop_size: 321 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 }} '
                f'data_param {{ source: "{root}/data_lmdb" batch_size: {batch} backend: LMDB prefetch: 4 }} }}')
    return p


def seg_net(root, batch, workers):
    p = os.path.join(root, f"seg{workers}.prototxt")
    ps = {"source": f"{root}/seg", "batch_size": batch, "crop": 321, "seed": 1, "workers": workers}
    with open(p, "w") as f:
        f.write('layer { name: "data" type: "Python" top: "data" top: "label" python_param { '
                f'module: "netspec.data.seg" layer: "SegDataLayer" param_str: "{ps!r}" }} }}')
    return p


class Config:
    def __init__(self, layer, workers, kind, root, batch, device):
        self.layer, self.workers, self.kind, self.root, self.batch, self.device = \
            layer, workers, kind, root, batch, device
        self.times, self.cpu = [], []

    @property
    def name(self):
        return f"{self.layer:4s} {'inline' if self.workers == 0 else f'{self.workers} {self.kind}'}"

    def open(self):
        os.environ["NETSPEC_LOADER_WORKERS"] = str(self.workers)
        os.environ["NETSPEC_LOADER_KIND"] = self.kind
        netspec.set_random_seed(1)
        if self.layer == "data":
            net = Net(data_net(self.root, self.batch), netspec.TRAIN)
        else:
            net = Net(seg_net(self.root, self.batch, self.workers), netspec.TRAIN)
        mod = net.module.get_module(0).to(self.device)
        return net, mod

    def batches(self, n):
        net, mod = self.open()
        out = [tuple(t.cpu() for t in mod()) for _ in range(n)]
        del net, mod
        return out

    def run(self, n):
        net, mod = self.open()
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        for _ in range(2):  # starts the workers and fills the pipeline
            mod()
        sync()
        loader = mod._loader if self.layer == "data" else mod.layer._loader
        pids = [w.proc.pid for w in loader._workers if hasattr(w, "proc")] if loader is not None else []
        c, t = cpu_seconds(pids), time.perf_counter()
        for _ in range(n):
            mod()
        sync()
        self.times.append(time.perf_counter() - t)
        self.cpu.append(cpu_seconds(pids) - c)  # steady state: the read-ahead is as long at both ends
        del net, mod

    def rate(self, n):
        return n * self.batch / sorted(self.times)[len(self.times) // 2]

    def cpu_per_image(self, n):
        return sorted(self.cpu)[len(self.cpu) // 2] / (n * self.batch)


def cpu_seconds(pids):
    """CPU time of this process (all its threads) and of the worker processes ``pids`` so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--batches", type=int, default=15, help="timed batches per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=["thread", "process"], choices=["thread", "process"])
    ap.add_argument("--layers", nargs="+", default=["data", "seg"], choices=["data", "seg"])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as root:
        t = time.perf_counter()
        size = make_datasets(root, a.images)
        print(f"{a.images} JPEG {W}x{H} images ({size / 1024:.0f} KiB each), PNG labels; written in "
              f"{time.perf_counter() - t:.1f} s")
        configs = [Config(layer, w, k, root, a.batch, dev) for layer in a.layers for w in a.workers
                   for k in (a.kinds if w else ["thread"])]
        for layer in a.layers:
            same = [c for c in configs if c.layer == layer]
            ref = same[0].batches(3)
            for c in same[1:]:
                got = c.batches(3)
                assert all(torch.equal(x, y) for bx, by in zip(ref, got) for x, y in zip(bx, by)), \
                    f"{c.name} gives other batches than {same[0].name}"
        print(f"same batches in every configuration; cv2 threads {cv2.getNumThreads()}, torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, device {dev}")
        for _ in range(a.rounds):
            for c in configs:
                c.run(a.batches)
        print(f"\nbatch {a.batch}, crop 321 + mirror, median of {a.rounds} interleaved runs of {a.batches} batches")
        print("(CPU ms/image: this process's threads and the worker processes together; what the loading costs "
              "when cores are shared)")
        print(f"{'layer / loading':24s} {'images/s':>9s} {'vs inline':>10s} {'CPU ms/image':>13s}")
        for layer in a.layers:
            same = [c for c in configs if c.layer == layer]
            base = next((c.rate(a.batches) for c in same if c.workers == 0), None)
            for c in same:
                r = c.rate(a.batches)
                ratio = f"{r / base:9.2f}x" if base else ""
                print(f"{c.name:24s} {r:9.1f} {ratio:>10s} {1000 * c.cpu_per_image(a.batches):13.2f}")


if __name__ == "__main__":
    main()
