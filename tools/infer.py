#!/usr/bin/env python
"""Segment images with a deploy net: writes <out>/labels/<name>.png (class indices), <out>/color/
<name>.png (VOC palette up to 21 classes, distinct colours beyond) and <out>/overlay/<name>.png.

    python tools/infer.py photos/ --model prototxt/demo/deploy.prototxt \
        --weights snapshots/demo/demo_iter_2000.caffemodel --out results/infer
    python tools/infer.py a.jpg b.jpg --model deploy.prototxt --weights fcn8s.caffemodel --out out --gpu 0
    python tools/infer.py imgs/ --model deploy.prototxt --weights w.caffemodel --out out --mean 0 0 0 --scale 0.00390625
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
