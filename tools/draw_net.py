#!/usr/bin/env python
"""Draw a net as a Graphviz graph: writes <out>.dot, <out>.txt (layers, bottoms, tops, shapes) and,
when Graphviz's `dot` is installed, the picture itself.

    python tools/draw_net.py prototxt/demo/train.prototxt demo.png
    python tools/draw_net.py prototxt/fcn8s_voc/val.prototxt fcn8s.svg --rankdir TB --phase TEST
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.draw_net import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
