"""Net surgery, as FCN's surgery.py: start a new net from another net's weights.

Usage:
    python tools/surgery.py NEW_NET.prototxt SOURCE.caffemodel OUT.caffemodel [--suffix S]
        [--mismatch error|skip|flat] [--no-interp] [--no-dilate]

Copies SOURCE's blobs into NEW_NET by layer name (a blob of another shape but the same element count is
reshaped: VGG's InnerProduct fc6/fc7 into FCN's convolutions; a dilated fc6 gets the taps of VGG's 7x7 kernel
it covers), fills every Deconvolution with bilinear kernels, writes OUT and lists the layers still at zero
(in an FCN the new score layers, and nothing else). NEW_NET is best its deploy prototxt: the same parameter
layers as the train net, no dataset needed. Exit status 2 with a message on a bad input.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.tools.cli import parse_args, run_tool  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", help="the new net (prototxt; its deploy form is enough)")
    parser.add_argument("source", help="the weights to start from (.caffemodel, current or V1 format)")
    parser.add_argument("out", help="the .caffemodel to write")
    parser.add_argument("--suffix", default="", help="source layer x goes to the new layer x+SUFFIX")
    parser.add_argument("--mismatch", choices=("error", "skip", "flat"), default="error",
                        help="a blob whose element count differs: stop (default), leave the target as it is, "
                             "or copy values in memory order as upstream's numpy flat assignment")
    parser.add_argument("--no-interp", action="store_true", help="leave the Deconvolution weights as they are")
    parser.add_argument("--no-dilate", action="store_true",
                        help="treat a dilated target kernel as a mismatch instead of taking the taps it covers")
    args = parse_args(parser, argv)
    from netspec import TEST, Net
    from netspec.authoring import surgery  # torch: after the arguments (--help stays fast)

    def run():
        net = Net(args.net, TEST)
        print(surgery.transplant(net, args.source, args.suffix, mismatch=args.mismatch,
                                 dilate=not args.no_dilate))
        if not args.no_interp:
            print("bilinear:", ", ".join(surgery.interp(net)) or "(no Deconvolution layers)")
        print("still zero:", ", ".join(surgery.zero_layers(net)) or "(none)")
        net.save(args.out)
        print(f"wrote {args.out}")

    return run_tool(run)


if __name__ == "__main__":
    sys.exit(main())
