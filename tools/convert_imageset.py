#!/usr/bin/env python
"""Convert a set of images to an LMDB of Caffe Datums, as Caffe's ``convert_imageset``.

    python tools/convert_imageset.py [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has one ``<path> <label>`` per line (split at the last space); ``ROOTFOLDER`` is prepended to each
path verbatim (end it with '/'). Keys are ``%08d_<path>`` (line index). Images are stored as raw BGR pixels,
or with --encoded as their file bytes (--encode_type png|jpg re-encodes). The database is written to
``DB_NAME.partial`` and renamed when complete. Flags accept Caffe's spellings (``-gray``, ``--gray=false``,
``--resize_height=256``).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.data import convert_imageset  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402


def gflag_bool(v):
    if v is None or isinstance(v, bool):
        return True if v is None else v
    if v.lower() in ("1", "true", "yes", "t", "y"):
        return True
    if v.lower() in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def gflags_argv(argv):
    """Caffe/gflags spellings to argparse: -flag -> --flag, --flag -> --flag=true, --noflag -> --flag=false."""
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and len(a) > 2 and a[1].isalpha():
            a = "-" + a
        if a.startswith("--no") and a[4:].split("=")[0] in BOOL_FLAGS:
            a = f"--{a[4:]}=false"
        elif a[2:] in BOOL_FLAGS:  # a bare bool flag never takes the next word as its value (gflags)
            a += "=true"
        out.append(a)
    return out


BOOL_FLAGS = ("gray", "shuffle", "check_size", "encoded")


def main(argv=None):
    p = argparse.ArgumentParser(prog="convert_imageset.py", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME")
    p.add_argument("root_folder", metavar="ROOTFOLDER/", help="folder the image paths of LISTFILE are relative "
                   "to (keep the trailing slash: it is prepended as written, as Caffe does)")
    p.add_argument("list_file", metavar="LISTFILE", help="text file of 'subfolder1/file1.JPEG 7' lines: an image "
                   "path and its integer label")
    p.add_argument("db_name", metavar="DB_NAME", help="the LMDB to create")
    for f, h in (("gray", "treat images as grayscale ones"),
                 ("shuffle", "randomly shuffle the order of images and their labels"),
                 ("check_size", "check that all the datum have the same size"),
                 ("encoded", "store the encoded image in the datum")):
        p.add_argument(f"--{f}", type=gflag_bool, nargs="?", const=True, default=False, help=h)
    p.add_argument("--backend", default="lmdb", help="the backend for storing the result (lmdb only)")
    p.add_argument("--resize_width", type=int, default=0, help="width images are resized to")
    p.add_argument("--resize_height", type=int, default=0, help="height images are resized to")
    p.add_argument("--encode_type", default="", help="what type should we encode the image as ('png','jpg',...)")
    p.add_argument("--seed", type=int, default=None, help="seed of --shuffle (netspec addition)")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings only, no progress bar (netspec "
                   "addition)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (netspec addition)")
    a = p.parse_args(gflags_argv(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    try:
        n = convert_imageset(a.root_folder, a.list_file, a.db_name, resize_height=a.resize_height,
                             resize_width=a.resize_width, shuffle=a.shuffle, gray=a.gray, encoded=a.encoded,
                             encode_type=a.encode_type, check_size=a.check_size, backend=a.backend,
                             seed=a.seed, progress=not (a.quiet or a.no_progress))
    except NetspecError as e:
        print(f"convert_imageset: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} records to {a.db_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
