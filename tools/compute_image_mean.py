#!/usr/bin/env python
"""Compute the mean image of an LMDB of Datums, as Caffe's ``compute_image_mean``.

    python tools/compute_image_mean.py [--backend lmdb] INPUT_DB [OUTPUT_FILE]

Writes OUTPUT_FILE (``mean.binaryproto``) as Caffe does: a BlobProto with num/channels/height/width
1 x C x H x W and the per-pixel mean (accumulated in float32 in key order), and prints the per-channel means
(``mean_value channel [c]: v``) for use as ``transform_param { mean_value: ... }``.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.data import compute_image_mean  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="compute_image_mean.py", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [FLAGS] INPUT_DB [OUTPUT_FILE]")
    p.add_argument("input_db", metavar="INPUT_DB", help="the LMDB of Datums to average (e.g. written by "
                   "tools/convert_imageset.py)")
    p.add_argument("output", metavar="OUTPUT_FILE", nargs="?", default=None,
                   help="where to write the mean image as a .binaryproto BlobProto (optional: without it only "
                        "the per-channel means are printed)")
    p.add_argument("--backend", "-backend", default="lmdb", help="the backend of the database (lmdb only)")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings only, no progress bar (netspec "
                   "addition)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (netspec addition)")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args([x.replace("-backend=", "--backend=", 1) if x.startswith("-backend=") else x for x in argv])
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    try:
        mean, channel_means = compute_image_mean(a.input_db, a.output, backend=a.backend, progress=not (a.quiet or a.no_progress))
    except NetspecError as e:
        print(f"compute_image_mean: error: {e}", file=sys.stderr)
        return 1
    if a.output:
        print(f"Write to {a.output}")
    print(f"Number of channels: {len(channel_means)}")
    for c, v in enumerate(channel_means):
        print(f"mean_value channel [{c}]: {v:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
