"""Every upstream FCN / Dilated FCN-2s net in ../shared/upstream_prototxt builds unchanged, and its blob shapes for
a 1x3x375x500 input equal ../shared/design/FCN_LAYER_TABLES.md. The Python data layers are swapped for an Input
layer of the table's shapes (a proto-to-proto edit of the test's copy; the layer code is tested elsewhere)."""
import re

import pytest

import netspec
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2
from netspec.formats.prototxt import parse_net


def tables(shared):
    text = (shared / "design" / "FCN_LAYER_TABLES.md").read_text()
    out = []
    for sec in re.split(r"^### ", text, flags=re.M)[1:]:
        title = sec.splitlines()[0].strip()
        m = re.search(r"Source: `upstream_prototxt/([^`]+)`", sec)
        if not m:
            continue
        rows = []
        for line in sec.splitlines():
            cells = [c.strip() for c in line.split("|")[1:-1]]
            if len(cells) == 6 and cells[0].isdigit():
                rows.append((cells[1], cells[2], cells[5]))
        out.append((title, m.group(1), rows))
    return out


def _shapes(cell):
    return [() if s == "(scalar)" else tuple(int(d) for d in s.split("x")) for s in cell.split()]


def _cases():
    from pathlib import Path
    shared = Path(__file__).resolve().parents[1] / ".." / "shared"
    if not shared.is_dir():
        return []
    return [pytest.param(t, id=t[0]) for t in tables(shared)]


@pytest.mark.parametrize("table", _cases())
def test_upstream_net_shapes(table, shared_dir):
    title, rel, rows = table
    path = shared_dir / "upstream_prototxt" / rel
    net = parse_net(path)
    data = caffe_pb2.NetParameter()
    data.CopyFrom(net)
    del data.layer[:]
    for lp, (name, ltype, shape_cell) in zip(net.layer, rows):
        assert lp.name == name and lp.type == ltype, f"{title}: table row {name} vs prototxt {lp.name}"
        new = data.layer.add()
        new.CopyFrom(lp)
        if lp.type in ("Python", "Input"):
            new.type = "Input"
            new.ClearField("python_param")
            new.ClearField("include")
            new.input_param.ClearField("shape")
            for s in _shapes(shape_cell):
                new.input_param.shape.add().dim.extend(s)
    assert len(net.layer) == len(rows)
    built = Net(data, netspec.TRAIN)
    nodes = [n for n in built.module.nodes if n.type != "Split"]
    assert len(nodes) == len(rows)
    for node, (name, ltype, cell) in zip(nodes, rows):
        assert node.top_shapes == _shapes(cell), f"{title}: layer {name} ({ltype})"
