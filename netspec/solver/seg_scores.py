"""FCN's segmentation scores over a solver's test passes: score.py's lines after training, as a test hook.

A test net FCN's score.py would score (a 4-D ``score`` blob and a ``label`` blob) gets its confusion matrix
accumulated over each test pass by :class:`SegScores` (a test hook: ``Solver.test_hooks``); after
training, :meth:`SegScores.finish` prints score.py's lines (``>>> Iteration N test net #i: ...``, then
``mean IU 0.93`` and the rest) from the last pass when it ran at the final iteration, else from one pass run
then. Also what says which images a pass covered (the net's data layer, the records of its source), which
tools/score.py uses too. Torch-free (score.py's ``--help`` imports it)."""
import logging
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from ..errors import NetspecError
from .metrics import fast_hist, format_scores, scores

log = logging.getLogger("netspec")


def is_seg_net(net) -> bool:
    """A segmentation test net as FCN's score.py sees one: a 4-D 'score' blob and a 'label' blob."""
    return "score" in net.blobs and "label" in net.blobs and len(net.blobs["score"].shape) == 4


class SegScores:
    """The confusion matrix of every segmentation test net's last pass (``passes[i]``: ``iter``, ``batches``,
    ``images``, ``loss``, ``hist``), and score.py's lines from it after training (:meth:`finish`). A test hook
    (begin/batch/end, as :class:`netspec.solver.solvers.TestHook`); add it to a solver with :meth:`attach`
    before ``solve()``."""

    def __init__(self):
        self.passes: Dict[int, dict] = {}
        self._running: Dict[int, list] = {}  # test net -> [hist, images] of the pass under way

    @classmethod
    def attach(cls, solver) -> "SegScores":
        """The SegScores hook of ``solver``, added to its ``test_hooks`` if it has none yet."""
        for h in solver.test_hooks:
            if isinstance(h, cls):
                return h
        hook = cls()
        solver.test_hooks.append(hook)
        return hook

    def begin(self, solver, i, net):
        if not is_seg_net(net):
            return ()
        self._running[i] = [None, 0]
        return ("score", "label")

    def batch(self, solver, i, net):
        acc = self._running.get(i)
        if acc is None:
            return
        score = net.blobs["score"].data
        if acc[0] is None:
            acc[0] = np.zeros((score.shape[1],) * 2, np.int64)
        pred = score.argmax(1)
        acc[0] += fast_hist(net.blobs["label"].data.reshape(pred.shape), pred, score.shape[1])
        acc[1] += pred.shape[0]

    def end(self, solver, i, net, summary):
        acc = self._running.pop(i, None)
        if acc is not None:
            self.passes[i] = {"iter": summary["iter"], "batches": summary["batches"], "loss": summary["loss"],
                              "hist": acc[0], "images": acc[1]}

    def finish(self, solver, out=None) -> List[dict]:
        """After solve(): the FCN score.py lines (``mean IU 0.9312``) of every segmentation test net, on ``out``
        (stdout). When the last test pass ran at the final iteration its confusion matrix is used, so the scores
        and the ``Test net output`` lines cover the same images; otherwise one test pass of ``test_iter``
        batches runs now (announced, with a progress bar). Returns the scores per test net."""
        from ..net.runtime import is_root
        results = []
        if not is_root():
            return results
        if self not in solver.test_hooks:
            solver.test_hooks.append(self)
        for i, net in enumerate(solver.test_nets):
            if not is_seg_net(net) or solver.param.test_iter[i] == 0:
                continue
            rec = self.passes.get(i)
            reused = rec is not None and rec["iter"] == solver.iter and rec["hist"] is not None
            if not reused:
                log.info("Scoring test net #%d after training: %d batches (set --test-iter N for fewer)", i,
                         solver.param.test_iter[i])
                solver.test(i, log_outputs=False)
                rec = self.passes[i]
            s = scores(rec["hist"])
            s["loss"], s["images"], s["batches"] = rec["loss"], rec["images"], rec["batches"]
            where = images_note(net, rec, reused)
            log.info("Test net #%d segmentation scores after %d iterations (%s)", i, solver.iter, where)
            print(f">>> Iteration {solver.iter} test net #{i}: {where}", file=out or sys.stdout)
            print(format_scores(s, loss=rec["loss"]), file=out or sys.stdout, flush=True)
            results.append(s)
        return results


def images_note(net, rec, reused: bool) -> str:
    """Which images a test pass's figures cover: ``20 batches x 1 = 20 of the 50 images of data/demo/val``."""
    per = rec["images"] // max(1, rec["batches"])
    head = "the Test net output pass above: " if reused else ""
    note = f"{head}{rec['batches']} batches x {per} = {rec['images']} images"
    try:
        info = data_layer_info(net.net_param)
        total = count_records(info)
    except Exception:  # best effort: a note, never a failure
        info, total = None, None
    if total:
        note = f"{head}{rec['batches']} batches x {per} = {rec['images']} of the {total} images of {info['source']}"
        if rec["images"] < total:
            note += "; tools/score.py scores them all"
    return note


def data_layer_info(net_param) -> Optional[dict]:
    """What the net's data layer reads: ``{'kind', 'source', 'batch_size', 'module', 'layer', 'param'}``."""
    from ..layers.python import parse_param_str
    for lp in net_param.layer:
        if lp.type == "Python":
            try:
                p = parse_param_str(lp.python_param.param_str)
            except NetspecError:
                p = {}
            p = p if isinstance(p, dict) else {}
            src = p.get("source") or p.get("voc_dir") or p.get("sbdd_dir") or p.get("siftflow_dir") or \
                p.get("nyud_dir") or p.get("context_dir")
            return {"kind": "python", "source": src, "batch_size": int(p.get("batch_size", 1)),
                    "module": lp.python_param.module, "layer": lp.python_param.layer, "param": p}
        if lp.type in ("Data", "ImageData"):
            src = lp.data_param.source if lp.type == "Data" else lp.image_data_param.source
            bs = lp.data_param.batch_size if lp.type == "Data" else lp.image_data_param.batch_size
            return {"kind": lp.type, "source": src, "batch_size": max(1, bs), "module": "", "layer": "",
                    "param": {}}
    return None


def count_records(info: Optional[dict]) -> Optional[int]:
    """Records in a data layer's source (a SegDataLayer LMDB pair, an LMDB, or an image list), else None."""
    if not info or not info.get("source"):
        return None
    src = info["source"]
    try:
        from ..data.lmdb_io import LMDBReader
        if info["kind"] == "python" and os.path.isdir(os.path.join(src, "images")):
            return len(LMDBReader(os.path.join(src, "images")))
        if info["kind"] == "Data" and os.path.isdir(src):
            return len(LMDBReader(src))
        if info["kind"] == "ImageData" and os.path.isfile(src):
            with open(src) as f:
                return sum(1 for line in f if line.strip())
    except Exception as e:  # a broken source is the data layer's to report when the net is built
        log.debug("cannot count records of %s: %s", src, e)
    return None
