#!/usr/bin/env python
"""FCN segmentation metrics over a split, as fcn.berkeleyvision.org's score.py computes them:
`overall accuracy`, `mean accuracy`, `mean IU`, `fwavacc`, then `IU <class> v` per class (and per-group
lines when the data has a groups.txt or --groups is given); --table adds a per-class table (IoU and accuracy
in percent, pixel share) after them.

    python tools/score.py --model prototxt/demo/val.prototxt --weights snapshots/demo/demo_iter_2000.caffemodel
    python tools/score.py --model prototxt/demo/deploy.prototxt --dataset data/demo/val \
        --weights snapshots/demo/demo_iter_2000.caffemodel --classes demo --save-dir results/demo
    python tools/score.py --model val.prototxt --weights fcn8s.caffemodel --classes voc --iterations 736 --gpu 0
    python tools/score.py --model prototxt/unet_idd/val.prototxt --weights snapshots/unet_idd/train_iter_30000.caffemodel \
        --classes idd --table --gpu 0
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
# This folder holds test.py and time.py: keep it off sys.path so they never shadow the standard library.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
sys.path.insert(0, os.path.dirname(_TOOLS))

from netspec.tools.score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
