"""Convert Caffe weights to and from PyTorch state dicts; list a caffemodel; fold BatchNorm for deploy.

Usage:
    python tools/convert_caffemodel.py IN.caffemodel OUT.pt [--model NET.prototxt] [--fp16]
    python tools/convert_caffemodel.py IN.pt OUT.caffemodel --model NET.prototxt
    python tools/convert_caffemodel.py IN.caffemodel OUT.pt --fold-bn --out-prototxt DEPLOY_FOLDED.prototxt
    python tools/convert_caffemodel.py --list IN.caffemodel

The direction comes from the extensions (.caffemodel; .pt or .pth). A .pt holds a state dict whose keys are
those of ``netspec.Net(NET.prototxt, TEST).module.state_dict()`` (``conv1.weight``, ``conv1.bias``; see
``netspec/interop/convert.py`` for the name mapping), loadable with ``torch.load(path, weights_only=True)``. Without
--model the keys come from the caffemodel's own layer list. V0/V1 files are upgraded on the way. The
output never replaces an input file. Exit status: 0 done, 2 bad input, 1 I/O error.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.tools.cli import parse_args, run_tool  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="convert_caffemodel.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("input", nargs="?", help=".caffemodel or .pt/.pth to convert")
    parser.add_argument("output", nargs="?", help="where to write (.pt/.pth or .caffemodel)")
    parser.add_argument("--list", metavar="FILE",
                        help="print the layers, types, blob shapes, parameter counts, totals and format "
                             "version of a caffemodel (or the keys of a .pt) and exit")
    parser.add_argument("--model", "--prototxt", dest="prototxt", metavar="NET",
                        help="net definition that names the blobs (required for .pt input); a "
                             ".caffemodel may serve as the definition too")
    parser.add_argument("--fp16", action="store_true", help="store float16 tensors (.pt output only)")
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold BatchNorm (+ the Scale after it) into the preceding Convolution / "
                             "Deconvolution / InnerProduct (deploy nets)")
    parser.add_argument("--out-prototxt", metavar="FILE",
                        help="write the net definition used (folded with --fold-bn) as a prototxt")
    parser.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST",
                        help="phase the prototxt is built in (default TEST)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when the caffemodel lacks blobs for a layer of the prototxt")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only: print nothing on success")
    args = parse_args(parser, argv)
    from netspec.interop import convert  # torch: after the arguments (--help stays fast)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    def run():
        if args.list:
            if args.input or args.output:
                parser.error("--list takes one file and no other positional arguments")
            print(convert.list_file(args.list))
            return
        if not (args.input and args.output):
            parser.error("give IN and OUT files (or --list FILE)")
        report = convert.convert(
            args.input, args.output, prototxt_path=args.prototxt, fp16=args.fp16, fold_bn=args.fold_bn,
            out_prototxt=args.out_prototxt, phase=getattr(caffe_pb2, args.phase), strict=args.strict)
        if not args.quiet:
            print("\n".join(report.lines()))

    return run_tool(run)


if __name__ == "__main__":
    sys.exit(main())
