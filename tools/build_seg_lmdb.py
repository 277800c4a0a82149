#!/usr/bin/env python
"""Pack a segmentation dataset (VOC2012 [+ SBD], SBD, ADE20K, Cityscapes, IDD, KITTI road, NYUDv2,
PASCAL-Context, SIFT Flow) from its usual on-disk layout into the ``OUT/images`` + ``OUT/labels`` LMDB pair that
``netspec.data.seg.SegDataLayer`` reads, and write ``OUT/class_weights.txt`` and ``OUT/loss_param.prototxt``.

    python tools/build_seg_lmdb.py DATASET ROOT OUT [--split train]
    python tools/build_seg_lmdb.py idd IDD_Segmentation data/idd/train
    python tools/build_seg_lmdb.py idd IDD_Segmentation data/idd/val --split val

See ``netspec/data/packers.py`` for the layouts and label conventions.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.data.packers import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
