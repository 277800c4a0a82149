"""What every command-line tool shares: how a bad input ends the run."""
import sys

from .errors import NetspecError


def run_tool(body) -> int:
    """Run a tool's work; a netspec error prints ``error: ...`` and exits 2, an OS error (missing file,
    permissions, full disk) exits 1. ``body()`` may return an exit code; None means 0."""
    try:
        return body() or 0
    except NetspecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def parse_args(parser, argv):
    """``parser.parse_args(argv)`` with the shared ``--proto`` option: a Caffe fork's caffe.proto (SSD,
    DeepLab, PSPNet ...) becomes the schema every prototxt, caffemodel and solverstate is read and written with
    (:func:`netspec.proto.load_proto`), for the rest of the process."""
    parser.add_argument("--proto", metavar="CAFFE_PROTO",
                        help="a Caffe fork's caffe.proto, for nets that use its own fields (compiled at start; "
                             "needs grpcio-tools)")
    args = parser.parse_args(argv)
    if args.proto:
        from .proto import load_proto
        try:
            load_proto(args.proto)
        except NetspecError as e:
            parser.exit(2, f"error: --proto: {e}\n")
    return args
