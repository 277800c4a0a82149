#!/usr/bin/env python
"""Benchmark a net layer by layer as `caffe time` does: one warm-up forward/backward, then --iterations
timed passes; logs `<layer>  forward: X ms.` and `backward` per layer, the pass averages and `*** Benchmark ends ***`,
then prints the layers sorted by time.

    python tools/time.py --model prototxt/demo/train.prototxt --iterations 20
    python tools/time.py --model prototxt/demo/deploy.prototxt --phase TEST --gpu 0
    python tools/time.py --model val.prototxt --weights a.caffemodel --phase TEST --iterations 10
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.time import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
