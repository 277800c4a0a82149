"""Parity with real BVLC Caffe on every case of ../shared/golden/layers, nets and formats: forward relative
error <= 1e-5 and backward <= 1e-4 per blob and per param diff."""
from pathlib import Path

import pytest

from golden_harness import run_case

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "golden"


def _cases(sub):
    d = SHARED / sub
    return sorted(p.name for p in d.iterdir() if (p / "net.prototxt").exists()) if d.is_dir() else []


@pytest.mark.parametrize("case", _cases("layers"))
def test_layer_case(case, shared_dir):
    run_case(shared_dir / "golden" / "layers" / case)


@pytest.mark.parametrize("case", _cases("nets"))
def test_net_case(case, shared_dir):
    run_case(shared_dir / "golden" / "nets" / case, fwd_tol=1e-5, bwd_tol=1e-4)


def test_v1_upgraded_net_case(shared_dir):
    """The V1 VGG-like net, loaded from its V1 prototxt and V1 caffemodel, gives Caffe's outputs."""
    run_case(shared_dir / "golden" / "formats" / "v1_vgg_like")


def test_fanout_split_case(shared_dir):
    run_case(shared_dir / "golden" / "formats" / "fanout_split_caffemodel")
