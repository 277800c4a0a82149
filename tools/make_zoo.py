"""Generate the model zoo: prototxt/<name>/{train,val,deploy}.prototxt and solvers/<name>.prototxt.

Usage:
    python tools/make_zoo.py                 # (re)write every model's files in the repository
    python tools/make_zoo.py demo fcn8s_voc  # only these models
    python tools/make_zoo.py --check         # exit 1 if a committed file differs from the code
    python tools/make_zoo.py --list          # the model names and what they are

The nets are defined in netspec/authoring/zoo/ (NetSpec code, Crop offsets computed from the graph); the
generated files are committed so that users and tools need no Python to read them.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT,
                        help="repository root to write under (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="compare the files under --out with the code instead of writing")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--class-weights-from-data", action="store_true",
                        help="put the packed training split's class_weights.txt (e.g. data/idd/train) into the "
                             "losses of the nets that use one (default: weights of 1, independent of local data)")
    args = parser.parse_args(argv)
    from netspec.authoring import zoo  # torch (the registry): after the arguments (--help stays fast)
    from netspec.authoring.zoo import common
    common.CLASS_WEIGHTS_FROM_DATA = args.class_weights_from_data

    if args.list:
        for name in zoo.names():
            print(f"{name:24s} {zoo.get(name).description}")
        return 0
    unknown = [m for m in args.models if m not in zoo.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(zoo.names())}")
    models = args.models or None
    if args.check:
        stale = []
        for rel, text in zoo.files(models).items():
            path = args.out / rel
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
        for rel in stale:
            print(f"out of date: {rel}")
        if stale:
            print("run: python tools/make_zoo.py", file=sys.stderr)
            return 1
        print(f"{len(zoo.files(models))} zoo files up to date")
        return 0
    written = zoo.write(str(args.out), models)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
