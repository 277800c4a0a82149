#!/usr/bin/env python
"""Score a trained model as `caffe test` does: the TEST-phase net runs --iterations batches; every
output element is logged per batch (`Batch i, loss = v`), then `Loss: L` and the mean of each output.

    python tools/test.py --model prototxt/demo/val.prototxt --weights snapshots/demo/demo_iter_2000.caffemodel
    python tools/test.py --model val.prototxt --weights a.caffemodel --iterations 736 --gpu 0
    python tools/test.py --model val.prototxt --weights a.caffemodel --level 1 --stage deploy,fast
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.test import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
