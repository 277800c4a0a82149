"""`caffe test` as a function: the library side of ``tools/test.py``.

``caffe_test`` runs a TEST-phase net for N batches and logs Caffe's lines (``Running for 50 iterations.``,
``Batch i, <output> = v``, ``Loss: L``, ``<output> = mean (* w = ... loss)``).
"""
import argparse
import logging
from collections import OrderedDict
from typing import Tuple

import numpy as np

from .cli import add_net_state, add_verbosity, parse_args, setup_logging, stages, tool_device
from ..errors import NetspecError

log = logging.getLogger("netspec")


def _g(v: float) -> str:
    """C++ ostream's default float formatting (6 significant digits)."""
    return f"{v:.6g}"


# -- caffe test --------------------------------------------------------------------------------------------
def caffe_test(net, iterations: int) -> Tuple[float, "OrderedDict[str, np.ndarray]"]:
    """Caffe's ``test()``: ``iterations`` forwards, logging every output element per batch and the means.

    Returns ``(mean loss, {output: mean value array})``."""
    import torch
    log.info("Running for %d iterations.", iterations)
    weights = dict(net.loss_outputs())
    sums: "OrderedDict[str, np.ndarray]" = OrderedDict()
    loss = 0.0
    for i in range(iterations):
        with torch.no_grad():
            out = net.forward_only()
        loss += sum(float(np.sum(net.blobs[o].data)) * w for o, w in weights.items())
        for o in net.outputs:
            vals = np.asarray(out[o], np.float64).reshape(-1)
            if o in sums:
                sums[o] += vals
            else:
                sums[o] = vals.copy()
            for v in vals:
                log.info("Batch %d, %s = %s", i, o, _g(v))
    loss /= max(1, iterations)
    log.info("Loss: %s", _g(loss))
    means = OrderedDict((o, v / max(1, iterations)) for o, v in sums.items())
    for o, vals in means.items():
        w = weights.get(o, 0.0)
        for v in vals:
            extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
            log.info("%s = %s%s", o, _g(v), extra)
    return loss, means


def parser():
    p = argparse.ArgumentParser(prog="test.py", description="Score a model (the equivalent of `caffe test`): "
                                "run the TEST-phase net for --iterations batches and log every output.")
    p.add_argument("--model", required=True, help="net prototxt (with its data layer)")
    p.add_argument("--weights", required=True, help="trained caffemodel(s), comma-separated")
    p.add_argument("--iterations", type=int, default=50, help="number of batches (default 50)")
    p.add_argument("--gpu", help="GPU id (the first of a list is used); default CPU")
    add_net_state(p)
    add_verbosity(p, progress=False)
    return p


def main(argv=None) -> int:
    args = parse_args(parser(), argv)
    from ..net.pycaffe import TEST, Net  # torch: after the arguments (--help stays fast)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        device = tool_device(args.gpu)
        net = Net(args.model, TEST, weights=args.weights, level=args.level, stages=stages(args.stage),
                  device=device)
        caffe_test(net, args.iterations)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    return 0


