"""What every command-line tool shares: the shared options, Caffe's log format, device choice, and how a bad
input ends the run. Imports no torch at module level, so a tool's ``--help`` stays fast.

Exit codes, the same for every tool: 0 the work is done; 1 the work failed (a netspec error names the file,
layer or blob and what to do, on stderr or in Caffe's log; or an OS error: missing file, permissions, full
disk); 2 the command line itself is wrong (argparse's usage errors, an unknown ``--dialect``, a ``--proto``
that does not compile)."""
import datetime
import logging
import os
import re
import sys
from typing import List, Optional

from ..errors import NetspecError
from ..progress import PROGRESS, progress, progress_bar  # noqa: F401  (the tools' names for the bars)

log = logging.getLogger("netspec")


def run_tool(body) -> int:
    """Run a tool's work; a netspec error or an OS error (missing file, permissions, full disk) prints
    ``error: ...`` and exits 1. ``body()`` may return an exit code; None means 0."""
    try:
        return body() or 0
    except (NetspecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


#: Caffe's single-dash flag spellings (``caffe train -solver S -weights W -gpu 0``) read as ``--solver`` etc.
CAFFE_FLAGS = ("solver", "weights", "gpu", "model", "iterations", "snapshot", "level", "stage", "phase",
               "sigint_effect", "sighup_effect")


def caffe_spellings(argv: List[str], parser=None) -> List[str]:
    """``-solver S`` / ``-solver=S`` (Caffe's gflags spellings) as ``--solver``, for the flags the parser has."""
    known = set(parser._option_string_actions) if parser is not None else None
    out = []
    for tok in argv:
        m = re.match(r"^-([a-z_]+)(=.*)?$", tok)
        if m and m.group(1) in CAFFE_FLAGS:
            for cand in ("--" + m.group(1), "--" + m.group(1).replace("_", "-")):
                if known is None or cand in known:
                    tok = cand + (m.group(2) or "")
                    break
        out.append(tok)
    return out


def add_net_state(p):
    """``--level`` and ``--stage``, as every tool that builds a net from a prototxt names them."""
    p.add_argument("--level", type=int, default=0, help="net state level: layers whose include/exclude rules "
                   "name min_level/max_level are kept or dropped by it (default 0)")
    p.add_argument("--stage", default="", help="net state stages, comma-separated: layers whose rules name a "
                   "stage are kept or dropped by them (default none)")


def add_verbosity(p, progress: bool = True):
    """The shared ``--quiet`` (warnings only, and no progress bar) and ``--no-progress`` (keep the log, drop
    the bar)."""
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only (no progress bar)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar on long passes (the log "
                       "lines stay)")


def parse_args(parser, argv):
    """``parser.parse_args(argv)`` with the shared ``--dialect`` and ``--proto`` options, Caffe's single-dash
    spellings of its flags (``-solver``, ``-weights``, ``-gpu``, ``-model``, ``-iterations``, ``-snapshot``)
    and the progress switch (``--no-progress``/``--quiet``). ``--dialect``: the
    Caffe fork whose meaning ambiguous layer types take (:func:`netspec.net.runtime.set_dialect`). ``--proto``: a
    Caffe fork's caffe.proto becomes the schema every prototxt, caffemodel and solverstate is read and written
    with (:func:`netspec.proto.load_proto`), for the rest of the process."""
    parser.add_argument("--proto", metavar="CAFFE_PROTO",
                        help="a Caffe fork's caffe.proto, for nets that use its own fields (compiled at start; "
                             "needs grpcio-tools)")
    parser.add_argument("--dialect", metavar="FORK",
                        help="read every net as written for this Caffe fork where forks give one layer type "
                             "different meanings (pspnet, segnet, ...; see docs/caffe_forks.md); default: "
                             "recognised from each net's layers and fields")
    if any(a.dest == "weights" for a in parser._actions):  # tools that load weights
        parser.add_argument("--strict-weights", action="store_true",
                            help="fail when a layer with parameters gets no weights from the file (default: "
                                 "a warning per layer and a loaded-N-of-M summary)")
    if parser.epilog is None:
        parser.epilog = ("Caffe's single-dash spellings (-solver, -weights, -gpu, -model, -iterations, -snapshot) "
                         "are accepted for the flags this tool has.")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(caffe_spellings(argv, parser))
    PROGRESS["enabled"] = not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))
    from ..net.runtime import set_dialect, set_strict_weights
    set_strict_weights(getattr(args, "strict_weights", False))  # process-wide: each tool run sets both afresh
    try:
        set_dialect(args.dialect or None)
    except NetspecError as e:
        parser.exit(2, f"error: --dialect: {e}\n")
    if args.proto:
        from ..proto import load_proto
        try:
            load_proto(args.proto)
        except NetspecError as e:
            parser.exit(2, f"error: --proto: {e}\n")
    return args


class GlogFormatter(logging.Formatter):
    """``I1121 13:45:00.123456 12345 solver.py] message``, as glog prints Caffe's lines."""

    def format(self, record):
        t = datetime.datetime.fromtimestamp(record.created)
        lvl = record.levelname[0] if record.levelname[0] in "IWEF" else "I"
        head = f"{lvl}{t:%m%d %H:%M:%S.%f} {os.getpid()} {record.filename}:{record.lineno}] "
        return "\n".join(head + line for line in record.getMessage().splitlines() or [""])


def setup_logging(level=logging.INFO, stream=None):
    root = logging.getLogger("netspec")
    root.setLevel(level)
    if not any(getattr(h, "_netspec", False) for h in root.handlers):
        h = logging.StreamHandler(stream or sys.stderr)
        h.setFormatter(GlogFormatter())
        h._netspec = True
        root.addHandler(h)
    root.propagate = False


def parse_gpus(spec: Optional[str]) -> List[int]:
    if spec is None or spec == "":
        return []
    if spec == "all":
        import torch
        return list(range(torch.cuda.device_count()))
    try:
        return [int(g) for g in spec.split(",")]
    except ValueError:
        raise NetspecError(f"--gpu {spec!r}: give a device id, a comma-separated list (0,1) or 'all'") from None


def cuda_or_cpu(gpus: List[int], index: int = 0):
    """``gpus[index]`` as a CUDA device; the CPU when no GPU is asked for (Caffe's ``Use CPU.``) or none exists."""
    import torch
    if not gpus:
        log.info("Use CPU.")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.warning("GPU requested (%s) but no CUDA device is available; falling back to CPU", gpus)
        return torch.device("cpu")
    return torch.device("cuda", gpus[index % len(gpus)])


def tool_device(gpu: Optional[str]):
    """The device of `caffe test/time`: the first id of ``--gpu`` (logs ``Use GPU with device ID 0``), else CPU."""
    dev = cuda_or_cpu(parse_gpus(gpu))
    if dev.type == "cuda":
        log.info("Use GPU with device ID %d", dev.index)
    return dev


def stages(stage: str) -> Optional[List[str]]:
    """``--stage a,b`` as a list (None when empty)."""
    return [s for s in (stage or "").split(",") if s] or None
