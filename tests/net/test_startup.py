"""The first Net() of a process stays cheap: shape inference (caffe_net.infer_top_shapes) uses the registry's
``reshape_like``, the layers' ``top_shapes`` and meta-tensor runs, none of which imports ``torch._dynamo``
(about 0.9 s on the 2-core machine, paid by FakeTensorMode). A counted fact, not a timing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from netspec.net.caffe_net import _meta_run, infer_top_shapes

ROOT = Path(__file__).resolve().parents[2]

#: One net per family of layers whose shapes are inferred differently: VGG-style (Convolution, ReLU, Pooling,
#: Dropout, InnerProduct, Softmax), an FCN training net (Crop, Deconvolution, Eltwise, SoftmaxWithLoss, Accuracy;
#: fed by Input layers, so no dataset is needed), ResNet/DenseNet (BatchNorm, Scale, Eltwise, Concat), PSPNet
#: (BN, Interp, Concat), SSD (Normalize, Permute, PriorBox, DetectionOutput), Faster R-CNN (Proposal,
#: ROIPooling), ENet (PReLU, Upsample, ...).
NETS = [
    ("prototxt/demo/deploy.prototxt", 1),
    ("tests/data/forks/densenet/DenseNet_121.prototxt", 1),
    ("prototxt/pspnet50_ade20k/deploy.prototxt", 1),
    ("tests/data/forks/ssd/VGG_VOC0712_SSD_300x300_deploy.prototxt", 1),
    ("tests/data/forks/faster_rcnn/ZF_test.prototxt", 1),
    ("tests/data/forks/enet/enet_deploy_final.prototxt", 1),
]

SCRIPT = """
import json, sys
import torch
from netspec import Net
seen = []
for path, phase in json.loads(sys.argv[1]):
    Net(path, phase)
    seen.append([path, "torch._dynamo" in sys.modules])
print(json.dumps(seen))
"""


TRAIN_NET = """
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } shape { dim: 2 dim: 1 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 20 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
        convolution_param { num_output: 3 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "skip" type: "Convolution" bottom: "conv1" top: "skip" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "crop_up" type: "Crop" bottom: "up" bottom: "skip" top: "up_c" crop_param { axis: 2 offset: 1 } }
layer { name: "fuse" type: "Eltwise" bottom: "up_c" bottom: "skip" top: "fuse" }
layer { name: "crop" type: "Crop" bottom: "fuse" bottom: "data" top: "out" crop_param { axis: 2 offset: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "out" bottom: "label" top: "acc" }
"""


def test_building_nets_does_not_import_dynamo(tmp_path):
    train = tmp_path / "train.prototxt"
    train.write_text(TRAIN_NET)
    nets = NETS + [(str(train), 0)]
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(nets)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p for p, _ in seen] == [p for p, _ in nets]
    imported = [p for p, dyn in seen if dyn]
    assert not imported, f"building these nets imported torch._dynamo (first: {imported[0]})"


class _OwnTensor(torch.nn.Module):
    """Adds a CPU tensor of its own (not a buffer): a meta run cannot mix it in, a fake-tensor run can."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.offset = torch.ones(1, 3, 1, 1)

    def forward(self, x):
        return x * self.weight.view(1, 3, 1, 1) + self.offset


def test_a_layer_a_meta_run_cannot_take_falls_back_to_fake_tensors():
    m = _OwnTensor()
    weight = m.weight
    with pytest.raises(RuntimeError):
        _meta_run(m, [(2, 3, 5, 4)])
    assert m.weight is weight and m.weight.device.type == "cpu"  # put back after the failed run
    assert infer_top_shapes(m, [(2, 3, 5, 4)]) == [(2, 3, 5, 4)]
    assert m.weight is weight


def test_meta_run_leaves_parameters_and_buffers_as_they_were():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = {k: (v, v.clone()) for k, v in m.state_dict(keep_vars=True).items()}
    assert _meta_run(m, [(2, 3, 9, 8)]) == [(2, 4, 7, 6)]
    for k, v in m.state_dict(keep_vars=True).items():
        assert v is before[k][0] and torch.equal(v, before[k][1]), k
