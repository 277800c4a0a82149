"""netspec.passes.dialects.detect: which Caffe fork a net is written for, from its own layer types and fields (the
released nets of each fork: tests/data/forks/*; PSPNet, SegNet, ENet in test_fork_nets_psp_segnet_enet.py)."""
import gzip
import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from netspec.passes import dialects
from netspec.formats.prototxt import parse_net
from netspec.proto import caffe_pb2

FORKS = Path(__file__).parents[1] / "data" / "forks"


def net(*layers):
    head = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
    return text_format.Parse(head + "\n".join(layers), caffe_pb2.NetParameter())


@pytest.mark.parametrize("layers,dialect", [
    (['layer { name: "r" type: "ReLU" bottom: "x" top: "x" }'], "bvlc"),
    (['layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 } }'], "deeplab"),
    (['layer { name: "b" type: "BN" bottom: "x" top: "x" }',
      'layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 } }'], "pspnet"),
    (['layer { name: "b" type: "BN" bottom: "x" top: "x" bn_param { momentum: 0.9 } }'], "pspnet"),
    (['layer { name: "b" type: "BN" bottom: "x" top: "x" bn_param { bn_mode: INFERENCE } }'], "segnet"),
    (['layer { name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { sample_weights_test: true } }'],
     "segnet"),
    (['layer { name: "d" type: "Python" bottom: "x" top: "y" python_param { module: "spatial_dropout" '
      'layer: "SpatialDropoutLayer" } }',
      'layer { name: "b" type: "BN" bottom: "y" top: "y" bn_param { bn_mode: INFERENCE } }'], "enet"),
    (['layer { name: "p" type: "PriorBox" bottom: "x" bottom: "x" top: "y" }'], "ssd"),
    (['layer { name: "p" type: "ROIPooling" bottom: "x" bottom: "x" top: "y" }'], "faster_rcnn"),
])
def test_detects(layers, dialect):
    name, reason = dialects.detect(net(*layers))
    assert name == dialect and reason


def test_nothing_to_tell():
    assert dialects.detect(caffe_pb2.NetParameter()) is None
    assert dialects.detect(net('layer { name: "u" type: "NoSuchType" bottom: "x" top: "y" }')) is None


def _template(path):
    """DeepLab's config templates with their ${...} variables filled as run_pascal.sh would."""
    text = (gzip.open if path.suffix == ".gz" else open)(path, "rt").read()
    return parse_net(re.sub(r"\$\{[A-Z_]+\}", "21", text))


@pytest.mark.parametrize("rel,dialect", [
    ("deeplab/v1_largefov_test.prototxt", "deeplab"),   # V1 format: read upgraded
    ("deeplab/v2_vgg16_train.prototxt", "deeplab"),
    ("faster_rcnn/VGG16_test.prototxt", "faster_rcnn"),
    ("ssd/VGG_VOC0712_SSD_300x300_deploy.prototxt", "ssd"),
])
def test_other_forks_released_nets(rel, dialect):
    path = FORKS / rel
    if not path.exists():
        pytest.skip(f"{rel} is not in this checkout")
    assert dialects.detect(_template(path))[0] == dialect
