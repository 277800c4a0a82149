#!/usr/bin/env python
"""Train a Caffe net from its solver prototxt, as `caffe train` does.

    python tools/train.py --solver solvers/demo.prototxt
    python tools/train.py --solver solvers/fcn8s_voc.prototxt --weights vgg16-fcn.caffemodel --gpu 0
    python tools/train.py --solver solvers/fcn8s_voc.prototxt --snapshot snapshots/fcn8s_iter_4000.solverstate
    torchrun --nproc_per_node 2 tools/train.py --solver solvers/fcn8s_voc.prototxt --gpu all
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.tools.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
