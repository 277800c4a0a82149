#!/usr/bin/env python
"""Plot a training log (ours or Caffe's glog output): train loss, learning rate and test outputs.

    python tools/train.py --solver solvers/demo.prototxt 2>&1 | tee train.log
    python tools/plot_log.py train.log                      # -> train.png
    python tools/plot_log.py caffe.INFO curves.png --csv curves.csv
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.plot_log import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
