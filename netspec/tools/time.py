"""`caffe time`: per-layer forward and backward timings of a net (the library side of tools/time.py).

Layers run one by one in prototxt order (Split layers included), each on detached copies of its bottoms, so
every layer's backward is its own autograd call and can be timed on its own, in reverse order, as Caffe's
``Layer::Backward`` loop does. The gradients a layer hands to its bottoms are passed on to the layer that
produced them; a loss top starts with its loss_weight as diff, as in Caffe. On a GPU every timer reading is
preceded by ``torch.cuda.synchronize``.
"""
import argparse
import logging
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple


from .cli import add_net_state, add_verbosity, parse_args, setup_logging, stages, tool_device
from ..errors import NetspecError

log = logging.getLogger("netspec")


def _g(v: float) -> str:
    return f"{v:.6g}"


class LayerTimer:
    """Runs ``net`` (a ``netspec.Net``) layer by layer, accumulating seconds per layer."""

    def __init__(self, net):
        self.net = net
        self.nodes = net.module.nodes
        self.device = net._device()
        self.forward_s = [0.0] * len(self.nodes)
        self.backward_s = [0.0] * len(self.nodes)
        self._records = []

    def _sync(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward(self, timed: bool = True) -> Optional[float]:
        """One forward through every layer; returns the total loss when not ``timed`` (the warm-up)."""
        import torch
        cm = self.net.module
        env: Dict[str, Tuple[torch.Tensor, int]] = {}
        needs: Dict[int, bool] = {}
        records = []
        loss = 0.0
        vid = 0
        feed = self.net._feed(grad=False)
        with torch.enable_grad():
            for node in self.nodes:
                module = cm.get_module(node.index)
                leaves: List[Tuple[torch.Tensor, int, bool]] = []
                self._sync()
                t0 = time.perf_counter()
                if getattr(module, "is_input", False):
                    outs = [feed[t] for t in node.tops]
                else:
                    for b, pd in zip(node.bottoms, node.propagate_down):
                        x, v = env[b]
                        need = bool(pd and needs[v])
                        leaves.append((x.detach().requires_grad_(True) if need else x.detach(), v, need))
                    out = module(*[leaf for leaf, _, _ in leaves])
                    outs = list(out) if isinstance(out, (tuple, list)) else [out]
                self._sync()
                if timed:
                    self.forward_s[node.index] += time.perf_counter() - t0
                tops = []
                for j, (t, o) in enumerate(zip(node.tops, outs)):
                    vid += 1
                    env[t] = (o, vid)
                    needs[vid] = bool(o.requires_grad)
                    w = node.loss_weights[j]
                    tops.append((o, vid, w))
                    if w and not timed:
                        loss += w * float(o.detach().float().sum())
                records.append((leaves, tops))
        self._records = records
        return None if timed else loss

    def backward(self, timed: bool = True):
        """Every layer's backward, last to first (layers nothing flows through take ~0 ms, as in Caffe)."""
        import torch
        if not self._records:
            raise NetspecError("backward() needs a forward() first")
        for p in self.net.module.parameters():
            p.grad = None
        grads: Dict[int, torch.Tensor] = {}
        for node, (leaves, tops) in zip(reversed(self.nodes), reversed(self._records)):
            self._sync()
            t0 = time.perf_counter()
            roots, gs = [], []
            for o, v, w in tops:
                g = grads.pop(v, None)
                if not o.requires_grad:
                    continue
                if w:
                    g = torch.full_like(o, w) if g is None else g + w
                if g is not None:
                    roots.append(o)
                    gs.append(g)
            if roots:
                torch.autograd.backward(roots, gs)
            for leaf, v, need in leaves:
                if need and leaf.grad is not None:
                    grads[v] = grads[v] + leaf.grad if v in grads else leaf.grad
            self._sync()
            if timed:
                self.backward_s[node.index] += time.perf_counter() - t0
        self._records = []


def time_net(net, iterations: int = 50) -> dict:
    """Caffe's ``time()`` with its log lines. Returns ms per layer and pass averages."""
    timer = LayerTimer(net)
    log.info("Performing Forward")
    loss = timer.forward(timed=False)
    log.info("Initial loss: %s", _g(loss))
    log.info("Performing Backward")
    timer.backward(timed=False)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    t_total = time.perf_counter()
    forward_s = backward_s = 0.0
    for j in range(iterations):
        t_iter = time.perf_counter()
        t0 = time.perf_counter()
        timer.forward()
        forward_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        timer.backward()
        backward_s += time.perf_counter() - t0
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _g((time.perf_counter() - t_iter) * 1e3))
    n = max(1, iterations)
    log.info("Average time per layer: ")
    layers = OrderedDict()
    for node in timer.nodes:
        f = timer.forward_s[node.index] * 1e3 / n
        b = timer.backward_s[node.index] * 1e3 / n
        layers[node.index] = (node.name, node.type, f, b)
        log.info("%10s\tforward: %s ms.", node.name, _g(f))
        log.info("%10s\tbackward: %s ms.", node.name, _g(b))
    total_ms = (time.perf_counter() - t_total) * 1e3
    res = {"initial_loss": loss, "layers": list(layers.values()), "forward_ms": forward_s * 1e3 / n,
           "backward_ms": backward_s * 1e3 / n, "forward_backward_ms": total_ms / n, "total_ms": total_ms}
    log.info("Average Forward pass: %s ms.", _g(res["forward_ms"]))
    log.info("Average Backward pass: %s ms.", _g(res["backward_ms"]))
    log.info("Average Forward-Backward: %s ms.", _g(res["forward_backward_ms"]))
    log.info("Total Time: %s ms.", _g(total_ms))
    log.info("*** Benchmark ends ***")
    return res


def format_table(res: dict) -> str:
    """The layers sorted by forward + backward time, slowest first, with their share of the total."""
    rows = sorted(res["layers"], key=lambda r: -(r[2] + r[3]))
    total = sum(r[2] + r[3] for r in rows) or 1.0
    w = max([len("layer")] + [len(r[0]) for r in rows])
    tw = max([len("type")] + [len(r[1]) for r in rows])
    lines = [f"{'layer':<{w}}  {'type':<{tw}}  {'forward ms':>10}  {'backward ms':>11}  {'total ms':>9}  "
             f"{'%':>6}"]
    for name, typ, f, b in rows:
        lines.append(f"{name:<{w}}  {typ:<{tw}}  {f:>10.3f}  {b:>11.3f}  {f + b:>9.3f}  "
                     f"{100 * (f + b) / total:>5.1f}%")
    lines.append(f"{'(sum)':<{w}}  {'':<{tw}}  {sum(r[2] for r in rows):>10.3f}  "
                 f"{sum(r[3] for r in rows):>11.3f}  {total:>9.3f}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="time.py", description="Benchmark a net layer by layer (the equivalent "
                                "of `caffe time`): one warm-up forward/backward, then --iterations timed "
                                "passes; per-layer forward/backward averages in ms.")
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", help="caffemodel(s) to load first (optional; timings do not depend on it "
                   "except through data-dependent layers)")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TRAIN", help="net phase (default TRAIN)")
    p.add_argument("--gpu", help="GPU id; default CPU")
    add_net_state(p)
    p.add_argument("--no-table", action="store_true", help="do not print the sorted table")
    add_verbosity(p, progress=False)
    return p


def main(argv=None, out=None) -> int:
    import sys
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")  # a wrong command line: exit 2
    from ..net.pycaffe import TEST, TRAIN, Net  # torch: after the arguments (--help stays fast)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        device = tool_device(args.gpu)
        phase = TRAIN if args.phase == "TRAIN" else TEST
        net = Net(args.model, phase, weights=args.weights, level=args.level, stages=stages(args.stage),
                  device=device)
        res = time_net(net, args.iterations)
        if not args.no_table:
            print(format_table(res), file=out or sys.stdout, flush=True)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    return 0
