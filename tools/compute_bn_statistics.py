#!/usr/bin/env python
"""Fold training-set statistics into a SegNet / ENet net's BN layers, as SegNet-Tutorial's
Scripts/compute_bn_statistics.py (and ENet's copy of it): the inference net and weights.

    python tools/compute_bn_statistics.py TRAIN_PROTOTXT WEIGHTS OUT_DIR [--iterations N]

The train net (its DenseImageData source, its batch size) runs N forwards in TEST phase with every ``BN`` layer
in ``bn_mode`` LEARN giving its batch mean and variance as extra tops; the means and variances are averaged over
the N batches, the variance made unbiased (× m / (m − 1), m = values per channel in a batch), and each layer's
scale γ and shift β become γ / √(var + 1e-9) and β − γ·mean / √(var + 1e-9). OUT_DIR gets
``inference.prototxt`` (data layers replaced by ``input: "data"`` of 1 × C × H × W, BN layers ``bn_mode:
INFERENCE``, SoftmaxWithLoss and Accuracy replaced by a Softmax ``prob``) and ``inference.caffemodel``.
"""
import argparse
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netspec  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402
from netspec.formats.prototxt import read_net, to_text  # noqa: E402

VAR_EPS = 1e-9  # caffe-segnet BNLayer's var_eps_


def testable(train):
    """The train net with mean and variance tops on every single-top BN layer; BN names and those tops."""
    net = type(train)()
    net.CopyFrom(train)
    stats = []
    for lp in net.layer:
        if lp.type != "BN":
            continue
        if any(lp.bn_param.HasField(f) for f in ("slope_filler", "bias_filler", "momentum", "frozen")):
            raise NetspecError(f"layer '{lp.name}': a PSPNet BN (its statistics are blobs already); this tool "
                               "folds SegNet / ENet BN layers")
        if len(lp.top) == 1:
            lp.top.extend([lp.top[0] + "-mean", lp.top[0] + "-var"])
        lp.bn_param.bn_mode = lp.bn_param.LEARN
        stats.append((lp.name, lp.top[0], lp.top[1], lp.top[2]))
    if not stats:
        raise NetspecError("the net has no BN layer")
    return net, stats


def inference_net(train, shape):
    """``train`` without data, loss and accuracy layers: ``input: "data"`` of ``shape``, BN INFERENCE, Softmax."""
    net = type(train)()
    net.CopyFrom(train)
    loss = [lp for lp in net.layer if lp.type in ("SoftmaxWithLoss", "Accuracy")]
    out_bottom = loss[0].bottom[0] if loss else None
    keep = [lp for lp in net.layer if not lp.type.endswith("Data") and lp not in loss]
    del net.layer[:]
    net.layer.extend(keep)
    for lp in net.layer:
        if lp.type == "BN":
            del lp.top[1:]
            lp.bn_param.bn_mode = lp.bn_param.INFERENCE
    net.input.append("data")
    net.input_dim.extend(shape)
    if out_bottom is not None:
        net.layer.add(name="prob", type="Softmax", bottom=[out_bottom], top=["prob"])
    return net


def compute(train_path, weights, out_dir, iterations=1, log=print):
    from netspec.net.pycaffe import Net  # torch: only when computing (--help stays fast)
    train = read_net(train_path)
    test_msg, stats = testable(train)
    net = Net(test_msg, netspec.TEST, weights=weights, dialect="segnet")
    sums = {name: [0.0, 0.0] for name, *_ in stats}
    for i in range(iterations):
        net.forward()
        for name, _, mean_top, var_top in stats:
            sums[name][0] = sums[name][0] + net.blobs[mean_top].data.reshape(-1).astype(np.float64)
            sums[name][1] = sums[name][1] + net.blobs[var_top].data.reshape(-1).astype(np.float64)
        log(f"progress: {i + 1}/{iterations}")
    shape = (1,) + tuple(net.blobs["data"].shape[1:])
    folded = {}
    for name, top, _, _ in stats:
        mean, var = (s / iterations for s in sums[name])
        values = int(np.prod(net.blobs[top].shape)) // mean.size
        if values > 1:
            var = var * values / (values - 1)
        scale, shift = (b.data.reshape(-1).astype(np.float64) for b in net.params[name][:2])
        inv = 1.0 / np.sqrt(var + VAR_EPS)
        folded[name] = (scale * inv, shift - scale * mean * inv)
    out_msg = inference_net(train, shape)
    out = Net(out_msg, netspec.TEST, dialect="segnet")
    for name, blobs in out.params.items():
        for j, b in enumerate(blobs):
            src = folded[name][j].reshape(b.shape) if name in folded else net.params[name][j].data
            b.data[...] = src
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "inference.prototxt"), "w", encoding="utf-8") as f:
        f.write(to_text(out_msg))
    out.save(os.path.join(out_dir, "inference.caffemodel"))
    return os.path.join(out_dir, "inference.prototxt"), os.path.join(out_dir, "inference.caffemodel")


def main(argv=None):
    p = argparse.ArgumentParser(prog="compute_bn_statistics.py", description=__doc__.split("\n\n")[0])
    p.add_argument("train_model", help="the train prototxt (DenseImageData, SegNet / ENet BN layers)")
    p.add_argument("weights", help="the trained .caffemodel")
    p.add_argument("out_dir", help="where inference.prototxt and inference.caffemodel go")
    p.add_argument("--iterations", type=int, default=100,
                   help="training batches to average the statistics over (default %(default)s)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        proto, weights = compute(a.train_model, a.weights, a.out_dir, a.iterations)
    except NetspecError as e:
        print(f"compute_bn_statistics: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {proto} and {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
