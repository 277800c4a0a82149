"""Export a Caffe deploy net to ONNX (and TorchScript / a torch.export program), checked against netspec.

Usage:
    python tools/export_onnx.py --model deploy.prototxt --weights w.caffemodel --out m.onnx
        [--dynamic-hw] [--opset N] [--torchscript m.ts.pt] [--exported-program m.pt2] [--check [--tol 1e-5]]
        [--input-shape data=1,3,500,500]

The ONNX graph takes the net's Input blobs (named as in the prototxt) and returns its output blobs (Caffe's
net outputs). The batch axis is dynamic where the net allows it; --dynamic-hw makes H and W dynamic too (FCNs).
--check runs the ONNX file in onnxruntime (and the TorchScript / torch.export files in torch) on the same
random input as netspec, and on a second input size when axes are dynamic, and prints the relative error
max|a - b| / max|b| of every output; above --tol the export fails. Layers that cannot be exported are named
with their type and the reason (or the ONNX opset they need). Needs: pip install onnx onnxscript onnxruntime.
Exit status: 0 done, 2 cannot export / check failed, 1 I/O error.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.tools.cli import parse_args, run_tool  # noqa: E402


def _shape(text):
    name, _, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W with positive sizes, got {text!r}")
    return name, shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", required=True, help="deploy prototxt (Input layers, no loss)")
    parser.add_argument("--weights", help="caffemodel (without: the fillers' initial values)")
    parser.add_argument("--out", help="ONNX file to write")
    parser.add_argument("--dynamic-hw", action="store_true", help="make H and W of 4-D inputs dynamic")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 18, the torch.export-based exporter's)")
    parser.add_argument("--torchscript", metavar="FILE", help="also write TorchScript (torch.jit.trace)")
    parser.add_argument("--exported-program", metavar="FILE",
                        help="also write the torch.export program (torch.export.save, .pt2)")
    parser.add_argument("--check", action="store_true",
                        help="compare every written file with netspec on random inputs")
    parser.add_argument("--tol", type=float, default=1e-5, help="relative error allowed by --check")
    parser.add_argument("--input-shape", type=_shape, action="append", default=[], metavar="NAME=N,C,H,W",
                        help="example input shape (default: the prototxt's Input shape); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    args = parse_args(parser, argv)
    from netspec.interop import export  # torch: after the arguments (--help stays fast)
    if not (args.out or args.torchscript or args.exported_program):
        parser.error("nothing to write: give --out, --torchscript or --exported-program")

    def run():
        report = export.export(
            args.model, weights=args.weights, onnx_path=args.out, torchscript=args.torchscript,
            exported_program=args.exported_program, dynamic_hw=args.dynamic_hw, opset=args.opset,
            check=args.check, tol=args.tol, input_shapes=dict(args.input_shape), seed=args.seed, echo=print)
        if args.check:
            print(f"check passed: max relative error {report.max_error:.3g} <= {args.tol:g}")

    return run_tool(run)


if __name__ == "__main__":
    sys.exit(main())
