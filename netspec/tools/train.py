"""`caffe train` on PyTorch: flags, device choice, signals, precision and distributed training.

The library side of ``tools/train.py``. Logs in glog's format (``I1121 13:45:00.123456 pid file] msg``) with
Caffe's messages, so existing Caffe log parsers keep working.
"""
import argparse
import logging
import os
import signal
import sys
from typing import List

from .cli import add_net_state, add_verbosity, cuda_or_cpu, parse_args, parse_gpus, setup_logging
from ..errors import NetspecError

log = logging.getLogger("netspec")


def build_parser():
    p = argparse.ArgumentParser(prog="train.py", description="Train a Caffe net defined by a solver prototxt "
                                "(the equivalent of `caffe train`).")
    p.add_argument("--solver", required=True, help="solver prototxt")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="caffemodel(s) to finetune from, comma-separated")
    g.add_argument("--snapshot", help=".solverstate to resume from")
    p.add_argument("--gpu", help="GPU id(s): 0, 0,1 or all (default: CPU unless the solver says solver_mode: GPU)")
    add_net_state(p)
    effects = ["stop", "snapshot", "none"]
    p.add_argument("--sigint-effect", "--sigint_effect", dest="sigint_effect", choices=effects, default="stop",
                   help="what Ctrl-C (SIGINT) does: stop (snapshot, then end; default), snapshot (and go on) or "
                        "none")
    p.add_argument("--sighup-effect", "--sighup_effect", dest="sighup_effect", choices=effects,
                   default="snapshot", help="what SIGHUP does: snapshot (default), stop or none")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision of forward/backward (the solver update stays fp32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for 4-D activations")
    p.add_argument("--loader-workers", type=int, metavar="N",
                   help="loader workers per data layer (default: $NETSPEC_LOADER_WORKERS or 1; 0 = load in forward)")
    p.add_argument("--loader-kind", choices=["thread", "process"],
                   help="loader workers as threads (default; decoding releases the GIL) or forked processes")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="keep ~sqrt(layers) blobs for backward and recompute the rest (less memory, ~1/3 slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the built net")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cudnn autotune (fixed input sizes)")
    p.add_argument("--no-tf32", action="store_true", help="on CUDA, keep float32 products in full float32 (as "
                   "Caffe computes them) instead of TF32 tensor cores on Ampere and later GPUs")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter (quick tries; pair it with "
                   "--test-iter, which bounds the test passes and the final scoring)")
    p.add_argument("--test-iter", type=int, metavar="N", help="override the solver's test_iter: N test batches "
                   "per test pass and for the final scores, for every test net (quick tries; 0 skips testing)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write loss, lr, test outputs and final scores as "
                   "TensorBoard scalars into DIR, live (needs the tensorboard package: pip install "
                   "'netspec[tensorboard]')")
    p.add_argument("--scalars-csv", metavar="FILE", help="also write the same scalars to a CSV file "
                   "(iteration,tag,value), live; needs nothing extra")
    add_verbosity(p)
    return p


class Scalars(logging.Handler):
    """Caffe's log lines as scalars, written while training runs: ``train/loss`` (the displayed, smoothed
    loss), ``lr``, ``test/<output>`` (``test#k/<output>`` for test net k > 0) and, from :meth:`scores`, the
    final ``score/<metric>``. Into TensorBoard (torch.utils.tensorboard's SummaryWriter) and/or a CSV file."""

    def __init__(self, tensorboard: str = None, csv_path: str = None):
        super().__init__(logging.INFO)
        from . import plot_log
        self._re = plot_log
        self.writer = None
        self.csv = None
        self._test = (0, 0)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise NetspecError("--tensorboard needs the tensorboard package: pip install tensorboard (or "
                                   "pip install 'netspec[tensorboard]'); --scalars-csv FILE needs nothing "
                                   "extra") from None
            self.writer = SummaryWriter(tensorboard)
        if csv_path:
            import csv
            d = os.path.dirname(os.path.abspath(csv_path))
            os.makedirs(d, exist_ok=True)
            self._csv_file = open(csv_path, "w", newline="", encoding="utf-8")
            self.csv = csv.writer(self._csv_file)
            self.csv.writerow(["iteration", "tag", "value"])
            self._csv_file.flush()

    def add(self, tag: str, it: int, value: float):
        if self.writer is not None:
            self.writer.add_scalar(tag, value, it)
            self.writer.flush()
        if self.csv is not None:
            self.csv.writerow([it, tag, repr(float(value))])
            self._csv_file.flush()

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:
            return
        v = self._re
        m = v._RE_LOSS.search(msg)
        if m:
            return self.add("train/loss", int(m.group(1)), float(m.group(2)))
        m = v._RE_LR.search(msg)
        if m:
            return self.add("lr", int(m.group(1)), float(m.group(2)))
        m = v._RE_TESTING.search(msg)
        if m:
            self._test = (int(m.group(1)), int(m.group(2)))
            return
        m = v._RE_OUTPUT.search(msg)
        if m and m.group(1) == "Test":
            it, k = self._test
            return self.add(f"test/{m.group(3)}" if k == 0 else f"test#{k}/{m.group(3)}", it, float(m.group(4)))

    def scores(self, it: int, results):
        for k, s in enumerate(results):
            for name in ("overall accuracy", "mean accuracy", "mean IU", "fwavacc"):
                self.add(f"score/{name}" if k == 0 else f"score#{k}/{name}", it, float(s[name]))

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.csv is not None:
            self._csv_file.close()
            self.csv = None
        super().close()


class _Signals:
    """Caffe's SignalHandler: SIGINT and SIGHUP become solver actions checked after each iteration."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = None
        self._old = {}

    def __enter__(self):
        for sig in self.effects:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.pending = self.effects[signum]

    def action(self):
        a, self.pending = self.pending or "none", None
        return a

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def choose_device(args, solver_param):
    from ..proto import caffe_pb2
    gpus = parse_gpus(args.gpu)
    # Like `caffe train`: without --gpu, use a GPU only when the solver *explicitly* says solver_mode: GPU
    # (the field's default is GPU, so an absent field means CPU).
    if (not gpus and args.gpu is None and solver_param.HasField("solver_mode")
            and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU):
        gpus = [solver_param.device_id]
    dev = cuda_or_cpu(gpus, int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        log.info("Using GPUs %s", ", ".join(map(str, gpus)))
    return dev


def launch(nproc: int, argv: List[str]) -> int:
    """Run this training command in ``nproc`` processes on this machine, as ``torchrun --standalone
    --nproc_per_node nproc -m netspec.tools.train ARGV`` would (what ``caffe train --gpu 0,1`` does by itself): process
    k uses the k-th listed GPU and reads its own part of the data. Returns 0, or 1 when a process failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    log.info("Starting %d training processes (one per GPU), as torchrun would", nproc)
    targs = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(nproc), "--module",
                                          "netspec.tools.train", *argv])
    try:
        run(targs)
    except ChildFailedError as e:
        log.error("a training process failed: %s", e)
        return 1
    return 0


def _wants_launch(args) -> int:
    """How many processes to start for ``--gpu`` outside torchrun: one per listed GPU when there are several
    and CUDA has them; 0 (train here) otherwise."""
    import torch
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ:
        return 0
    gpus = parse_gpus(args.gpu)
    if len(gpus) < 2 or not torch.cuda.is_available():
        return 0
    return len(gpus)


def _setup_process(args, sparam, distributed: bool):
    """The device, the process group of a multi-process run (ranks > 0 log warnings only), cuDNN's settings."""
    device = choose_device(args, sparam)
    if distributed:
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if dist.get_rank() != 0:
            logging.getLogger("netspec").setLevel(logging.WARNING)
    if device.type == "cuda":
        import torch
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    return device


def _attach_scalars(args, distributed: bool):
    """The --tensorboard / --scalars-csv writer on the root process, fed by the INFO records even with --quiet."""
    if not (args.tensorboard or args.scalars_csv) or (distributed and int(os.environ.get("RANK", "0")) != 0):
        return None
    scalars = Scalars(args.tensorboard, args.scalars_csv)
    root = logging.getLogger("netspec")
    if root.level > logging.INFO:  # --quiet: the scalars still need the INFO records, the console not
        for h in root.handlers:
            if getattr(h, "_netspec", False):
                h.setLevel(root.level)
        root.setLevel(logging.INFO)
    root.addHandler(scalars)
    return scalars


def _make_solver(args, sparam, device):
    """The Solver with the command line's overrides, speed settings and --weights applied."""
    from ..authoring.zoo.demo import pack_missing_data
    from ..data.workers import set_loader
    from ..solver.solvers import Solver
    if args.loader_workers is not None and args.loader_workers < 0:
        raise NetspecError(f"--loader-workers {args.loader_workers}: give 0 (load in forward) or more")
    set_loader(args.loader_workers, args.loader_kind or None)  # passed on, not through os.environ
    pack_missing_data(sparam, os.path.dirname(os.path.abspath(args.solver)))  # the demo's data, on first use
    stages = [s for s in args.stage.split(",") if s] or None
    solver = Solver(sparam, source=args.solver, level=args.level, stages=stages, device=device)  # parsed once
    if args.max_iter is not None:
        solver.param.max_iter = args.max_iter
    if args.test_iter is not None:
        if args.test_iter < 0:
            raise NetspecError(f"--test-iter {args.test_iter}: give 0 (no testing) or more batches")
        solver.param.test_iter[:] = [args.test_iter] * len(solver.param.test_iter)
    solver.configure(precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                     checkpoint=args.checkpoint_activations)
    if args.weights:
        for w in args.weights.split(","):
            log.info("Finetuning from %s", w.strip())  # as caffe.cpp's CopyLayers: --weights only
        solver.net.copy_from(args.weights)  # one report (and --strict-weights check) over every file
    if not args.snapshot:  # a snapshot's weights are restored later, in solve()
        solver.warn_zero_layers()
    return solver


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(build_parser(), argv)
    from ..formats import prototxt
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        nproc = _wants_launch(args)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    if nproc:
        return launch(nproc, argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    scalars = None
    try:
        sparam = prototxt.read_solver(args.solver)
        device = _setup_process(args, sparam, distributed)
        scalars = _attach_scalars(args, distributed)
        solver = _make_solver(args, sparam, device)
        with _Signals(args.sigint_effect, args.sighup_effect) as sig:
            solver.set_action_function(sig.action)
            solver.solve(args.snapshot)
        results = solver.finish()  # FCN's score.py lines, from the last test pass when it ran at the end
        if scalars is not None and results:
            scalars.scores(solver.iter, results)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    finally:
        from ..data.workers import set_loader
        set_loader()  # this run's loader settings end with it
        if scalars is not None:
            logging.getLogger("netspec").removeHandler(scalars)
            scalars.close()
        if distributed:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # the worker processes of launch() (python -m netspec.tools.train)
    sys.exit(main())
