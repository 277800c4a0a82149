"""Net graphs: the library side of ``tools/draw_net.py`` (Graphviz ``dot`` renders them)."""
import argparse
import logging
import os
import shutil
import subprocess
from typing import Dict, Optional


from ..tools.cli import add_net_state, parse_args, setup_logging, stages as parse_stages
from ..errors import NetspecError
from ..registry import LAYERS

log = logging.getLogger("netspec")


def _dot_quote(s: str) -> str:
    """A double-quoted dot ID; newlines become dot's centred line breaks."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _layer_detail(lp) -> str:
    """Key hyper-parameters of a layer, as Caffe's draw_net shows them (the registry's ``detail``)."""
    entry = LAYERS.find(lp.type)
    return entry.detail(lp) if entry is not None and entry.detail else ""


def net_graph(model: str, phase=None, level: int = 0, stages=None, shapes: bool = True):
    """(filtered NetParameter, {(layer index, top): shape} or None, why-no-shapes)."""
    from ..passes.graph import filter_net, net_state
    from ..net.pycaffe import load_net_param
    from ..proto import caffe_pb2
    phase = caffe_pb2.TEST if phase is None else phase
    net, where = load_net_param(model)
    filtered = filter_net(net, net_state(net, phase, level, stages), where)
    if not shapes:
        return filtered, None, "shapes not requested"
    try:
        from ..net.pycaffe import Net
        n = Net(model, phase, level=level, stages=stages)
    except Exception as e:  # e.g. a data layer whose source is absent
        return filtered, None, f"cannot build the net to infer shapes: {e}"
    by_layer = {}
    for node in n.module.nodes:
        for t, s in zip(node.tops, node.top_shapes):
            by_layer[(node.name, t)] = tuple(s)
    return filtered, by_layer, ""


def to_dot(net, shapes=None, rankdir: str = "TB", name: Optional[str] = None) -> str:
    """Graphviz text: layers as boxes (name, type, parameters), blobs as small octagons (name, shape); an
    in-place layer makes a new version of its blob, so the graph stays acyclic. Top to bottom by default, as
    the prototxt reads, with tight spacing: the demo FCN is 586 x 2970 px (Caffe's left-to-right layout gave
    9227 x 367 px, unreadable at any zoom that shows its width)."""
    lines = [f"digraph {_dot_quote(name or net.name or 'net')} {{", f"  rankdir={rankdir};",
             "  ranksep=0.18; nodesep=0.2;",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    version: Dict[str, int] = {}
    declared = set()

    def blob_id(name):
        return f"blob:{name}:{version.get(name, 0)}"

    def declare_blob(name, shape):
        bid = blob_id(name)
        if bid in declared:
            return bid
        declared.add(bid)
        label = name if shape is None else f"{name}\n{' x '.join(map(str, shape))}"
        lines.append(f"  {_dot_quote(bid)} [label={_dot_quote(label)}, "
                     'shape=octagon, fontsize=8, height=0.3, margin="0.04,0.02", style=filled, '
                     'fillcolor="#E0E0E0"];')
        return bid

    for i, lp in enumerate(net.layer):
        lid = f"layer:{i}:{lp.name}"
        detail = _layer_detail(lp)
        label = f"{lp.name}\n{lp.type}" + (f"\n{detail}" if detail else "")
        colour = getattr(LAYERS.find(lp.type), "colour", None) or "#6495ED"
        lines.append(f"  {_dot_quote(lid)} [label={_dot_quote(label)}, "
                     f'shape=box, margin="0.08,0.03", style="filled,rounded", fillcolor="{colour}"];')
        for b in lp.bottom:
            bid = declare_blob(b, None)
            lines.append(f"  {_dot_quote(bid)} -> {_dot_quote(lid)};")
        for t in lp.top:
            if t in lp.bottom:  # in place: a new version of the blob
                version[t] = version.get(t, 0) + 1
            elif t not in version:  # (a second producer -- another phase's data layer -- shares the node)
                version[t] = 0
            shape = shapes.get((lp.name, t)) if shapes else None
            tid = declare_blob(t, shape)
            lines.append(f"  {_dot_quote(lid)} -> {_dot_quote(tid)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def summary(net, shapes=None, note: str = "", name: Optional[str] = None) -> str:
    """A text table: index, layer, type, bottoms, tops (with shapes)."""
    rows = [("#", "layer", "type", "bottoms", "tops")]
    for i, lp in enumerate(net.layer):
        tops = []
        for t in lp.top:
            s = shapes.get((lp.name, t)) if shapes else None
            tops.append(t if s is None else f"{t} {list(s)}")
        rows.append((str(i), lp.name, lp.type, ", ".join(lp.bottom) or "-", ", ".join(tops) or "-"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    out = [f"net '{name or net.name}': {len(net.layer)} layers" + (f" ({note})" if note else "")]
    for r in rows:
        out.append("  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4])
    return "\n".join(out) + "\n"


def render_dot(dot_path: str, out_path: str, fmt: str) -> Optional[str]:
    """Run Graphviz; returns None on success, else the reason."""
    exe = shutil.which("dot")
    if exe is None:
        return ("Graphviz 'dot' is not installed, so no picture was made; install graphviz (e.g. `apt-get install "
                "graphviz`, `brew install graphviz` or `conda install graphviz`) and run "
                f"`dot -T{fmt} {dot_path} -o {out_path}`")
    r = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", out_path], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out_path):
        return f"dot failed (exit {r.returncode}): {r.stderr.strip()}"
    return None


def parser():
    p = argparse.ArgumentParser(prog="draw_net.py", description="Draw a net prototxt as a Graphviz graph: writes "
                                "<out>.dot, <out>.txt (layers, bottoms, tops, shapes) and the picture when "
                                "Graphviz is installed.")
    p.add_argument("model", help="net prototxt")
    p.add_argument("out", help="output picture (net.png, net.svg, net.pdf); the .dot and .txt go beside it")
    p.add_argument("--rankdir", choices=["LR", "TB", "BT", "RL"], default="TB", help="graph direction (default "
                   "TB: top to bottom, as the prototxt reads; Caffe's draw_net uses LR, a very wide picture for "
                   "a deep net)")
    p.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL",
                   help="draw the layers of one phase (default ALL: every layer; shapes from the TEST net)")
    add_net_state(p)
    p.add_argument("--no-shapes", action="store_true", help="do not build the net to infer blob shapes")
    return p


def main(argv=None, out=None) -> int:
    import sys
    from ..proto import caffe_pb2
    args = parse_args(parser(), argv)
    setup_logging(logging.WARNING)
    out = out or sys.stdout
    stages = parse_stages(args.stage)
    base, ext = os.path.splitext(args.out)
    fmt = ext.lstrip(".").lower() or "png"
    try:
        phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}[args.phase]
        if phase is None:
            from ..net.pycaffe import load_net_param
            net, _ = load_net_param(args.model)
            _, shapes, why = net_graph(args.model, caffe_pb2.TEST, args.level, stages, not args.no_shapes)
            # layers of both phases are drawn; shapes come from the TEST net (where a layer exists in it)
        else:
            net, shapes, why = net_graph(args.model, phase, args.level, stages, not args.no_shapes)
    except NetspecError as e:
        log.error("%s", e)
        return 1
    if shapes is None and not args.no_shapes:
        log.warning("drawing without blob shapes: %s", why)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    dot_path, txt_path = base + ".dot", base + ".txt"
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(to_dot(net, shapes, args.rankdir, name=net.name or os.path.splitext(os.path.basename(args.model))[0]))
    with open(txt_path, "w", encoding="utf-8") as f:
        f.write(summary(net, shapes, "" if shapes else "no shapes: " + why,
                        name=net.name or os.path.basename(args.model)))
    print(f"wrote {dot_path}", file=out)
    print(f"wrote {txt_path}", file=out)
    if fmt == "dot":
        return 0
    problem = render_dot(dot_path, args.out, fmt)
    if problem:
        print(problem, file=out)
    else:
        print(f"wrote {args.out}", file=out)
    return 0


