"""Regenerate netspec/proto/caffe_pb2.py from netspec/proto/caffe.proto.

Usage:
    python tools/gen_proto.py

Uses the protoc bundled with grpcio-tools (``pip install grpcio-tools``), so no system protoc is
needed.  Commit caffe.proto and the regenerated caffe_pb2.py together.
"""

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[1] / "netspec" / "proto"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR,
                        help="directory for caffe_pb2.py (default: %(default)s)")
    args = parser.parse_args(argv)

    from grpc_tools import protoc

    args.out.mkdir(parents=True, exist_ok=True)
    return protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={args.out}",
                        str(PROTO_DIR / "caffe.proto")])


if __name__ == "__main__":
    sys.exit(main())
