"""One home for the datasets' class names (netspec.data.classes): the packers, the demo set, the zoo and
tools/score.py's --classes all take theirs from it."""
import subprocess
import sys

from netspec.data import classes as C


def test_the_lists_and_their_sizes():
    sizes = {"DEMO_CLASSES": 4, "VOC_CLASSES": 21, "KITTI_ROAD_CLASSES": 2, "CITYSCAPES_CLASSES": 19,
             "SIFTFLOW_CLASSES": 33, "SIFTFLOW_GEO_CLASSES": 3, "IDD_CLASSES": 26}
    assert set(C.__all__) == set(sizes)
    for name, n in sizes.items():
        names = getattr(C, name)
        assert isinstance(names, tuple) and len(names) == n == len(set(names)), name


def test_everyone_takes_them_from_there():
    from netspec.data import packers, synthetic
    for name in ("VOC_CLASSES", "KITTI_ROAD_CLASSES", "CITYSCAPES_CLASSES", "SIFTFLOW_GEO_CLASSES", "IDD_CLASSES"):
        assert getattr(packers, name) is getattr(C, name)
    assert synthetic.CLASSES is C.DEMO_CLASSES
    from netspec.authoring.zoo import attention, deeplab, demo, unet
    assert unet.NUM_CLASSES == deeplab.NUM_CLASSES == len(C.IDD_CLASSES)
    assert attention.CITYSCAPES.num_classes == len(C.CITYSCAPES_CLASSES)
    assert attention.VOC.num_classes == len(C.VOC_CLASSES)
    assert demo.NUM_CLASSES == len(C.DEMO_CLASSES)


def test_the_zoo_does_not_import_the_packers():
    code = "import sys, netspec.authoring.zoo; print('netspec.data.packers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]
