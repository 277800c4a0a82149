"""Upgrade a deprecated (V0/V1, input-field, old BatchNorm) Caffe net to the current format.

Usage:
    python tools/upgrade_net_proto.py IN OUT [--format text|binary]

Caffe's ``upgrade_net_proto_text`` and ``upgrade_net_proto_binary`` in one tool: a text
``.prototxt`` is written back as text, a binary ``.caffemodel`` as binary (legacy 4-D blob
dims kept, as Caffe keeps them). The format is taken from ``--format``, else from the
extension, else from the content. Prints Caffe's upgrade log lines.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.formats import binary, prototxt
from netspec.passes import upgrade  # noqa: E402
from netspec.tools.cli import parse_args, run_tool  # noqa: E402

_TEXT_EXT = {".prototxt", ".pt", ".txt", ".pbtxt"}
_BINARY_EXT = {".caffemodel", ".binaryproto", ".pb", ".protobin"}


def detect_format(path):
    """'text' or 'binary' for the net file at ``path``: by extension, else by content
    (a text prototxt is UTF-8 without NUL bytes; packed float data almost never is)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _TEXT_EXT:
        return "text"
    if ext in _BINARY_EXT:
        return "binary"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a multi-byte character cut at the end
            return "binary"
    return "text"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="net to upgrade (.prototxt or .caffemodel)")
    parser.add_argument("output", help="where to write the upgraded net (same format)")
    parser.add_argument("--format", choices=("text", "binary"),
                        help="format of the input and output (default: detected)")
    args = parse_args(parser, argv)

    def run():
        fmt = args.format or detect_format(args.input)
        if fmt == "text":
            net = prototxt.read_net(args.input)
            needed = upgrade.needs_upgrade(net)
            net, log = upgrade.upgrade_net(net, args.input, inplace=True)
        else:
            model = binary.read_caffemodel(args.input)
            needed = upgrade.needs_upgrade(model.net)
            model, log = upgrade.upgrade_caffemodel(model, args.input)
        for line in log:
            print(line)
        if not needed:
            print(f"File already in latest proto format: {args.input}")
        if fmt == "text":
            prototxt.write_text(net, args.output)
            print(f"Wrote upgraded NetParameter text proto to {args.output}")
        else:
            binary.write_caffemodel(args.output, model)
            print(f"Wrote upgraded NetParameter binary proto to {args.output}")

    return run_tool(run)


if __name__ == "__main__":
    sys.exit(main())
