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
#: Dropout, InnerProduct, Softmax), a training net (Python data, Crop, Deconvolution, Eltwise, SoftmaxWithLoss,
#: Accuracy), ResNet/DenseNet (BatchNorm, Scale, Eltwise, Concat), PSPNet (BN, Interp, Concat), SSD (Normalize,
#: Permute, PriorBox, DetectionOutput), Faster R-CNN (Proposal, ROIPooling), ENet (PReLU, Upsample, ...).
NETS = [
    ("prototxt/demo/deploy.prototxt", 1),
    ("prototxt/demo/train.prototxt", 0),
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


def test_building_nets_does_not_import_dynamo():
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(NETS)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p for p, _ in seen] == [p for p, _ in NETS]
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
