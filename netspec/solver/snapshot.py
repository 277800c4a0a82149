"""The files of a solver's snapshots (Solver::Snapshot / Restore's plumbing): the one-run-per-prefix lock and
the removal of what killed runs left, the write of ``<prefix>_iter_N.caffemodel``, ``.trainstate`` and
``.solverstate`` (the solverstate last: it marks a complete snapshot; nothing half-written is left on a failed
write), and the checks a restore makes of the files it is given. ``Solver.snapshot()`` / ``Solver.restore()``
are the API; this module is theirs."""
import logging
import os
import re

import torch

from .. import progress as bars
from ..errors import SolverError

log = logging.getLogger("netspec")


def all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """torch.isfinite(t).all() in chunks: on a whole 1 GB blob its temporaries would take about 1.7 GB."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(c).all()) for c in flat.split(chunk))


def check_finite(solver) -> None:
    """A snapshot must be one to resume from: refuse parameters or history that went NaN/inf."""
    bad = [f"{lp.layer}[{lp.index}]" for lp in solver._params if not all_finite(lp.tensor)]
    if bad or not all(all_finite(h) for h in solver.history):
        raise SolverError(
            f"Iteration {solver.iter}: {'parameters ' + ', '.join(bad[:5]) if bad else 'the solver history'} "
            f"{'are' if bad else 'is'} not finite (the last update diverged); no snapshot written. Last good "
            f"snapshot: {solver._last_snapshot or 'none written yet'}. Lower base_lr or use clip_gradients")


def write_snapshot(solver, model: str, sfile: str) -> None:
    """The snapshot files of ``solver``: the weights ``model``, the exact-resume sidecar, then the solverstate
    ``sfile`` (history streamed from the tensors: no message of the whole state is built). A bar for large nets
    (a VGG16 FCN writes 2 x 0.5 GB); none for small or quick ones. On an OSError the files written so far are
    removed and a SolverError says what to do."""
    from ..formats import binary
    from . import train_state
    extra = train_state.sidecar(sfile)
    written = []
    sizes = (4 * sum(t.numel() for t in solver.net.module.parameters()), 4 * sum(h.numel() for h in solver.history))
    bar = bars.progress_bar(sum(sizes), desc="snapshot", unit="B", unit_scale=True)
    try:
        d = os.path.dirname(model)
        if d and not os.path.isdir(d):
            os.makedirs(d, exist_ok=True)
        log.info("Snapshotting to binary proto file %s", model)
        solver.net.save(model)
        bar.update(sizes[0])
        written.append(model)
        train_state.save(extra, train_state.capture(solver, [solver.net] + solver.test_nets))
        written.append(extra)
        state = binary.SolverStateData(iter=solver.iter, learned_net=model, current_step=solver.current_step,
                                       history=[h.detach().cpu().numpy() for h in solver.history])
        log.info("Snapshotting solver state to binary proto file %s", sfile)
        binary.write_solverstate(sfile, state)
        bar.update(sizes[1])
    except OSError as e:
        for path in written:  # a weights file without its solver state is no snapshot: do not leave one
            try:
                os.unlink(path)
            except OSError:
                pass
        what = e.strerror or str(e)
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise SolverError(f"cannot write snapshot {model}: {what}{where}. The previous snapshot "
                          f"({solver._last_snapshot or 'none'}) is intact; free disk space or change "
                          "snapshot_prefix, then resume with --snapshot") from e
    finally:
        bar.close()


def learned_net_path(state_file: str, learned_net: str, it: int) -> str:
    """The caffemodel of a solverstate: beside it first (a moved snapshot directory), then as stored (Caffe
    stores it relative to its working directory). A name with ``_iter_N`` must match the state's iteration:
    a same-prefix file of another run must not be loaded silently."""
    beside = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned_net))
    path = beside if os.path.isfile(beside) else learned_net
    if not os.path.isfile(path):
        raise SolverError(f"{state_file}: its weights file '{learned_net}' was found neither beside it ({beside}) "
                          f"nor relative to the working directory {os.getcwd()}")
    m = re.search(r"_iter_(\d+)\.caffemodel(?:\.h5)?$", path)
    if m and int(m.group(1)) != it:
        raise SolverError(f"{state_file} is the state of iteration {it} but its weights file {path} is of "
                          f"iteration {m.group(1)}: they are not one snapshot")
    return path


def load_history(state_file: str, state, history, solver_type: str) -> None:
    """Copy a solverstate's history blobs into the solver's ``history`` tensors, refusing a file written for
    another net or solver type."""
    from ..formats import binary
    if len(state.history) != len(history):
        raise SolverError(f"{state_file}: Incorrect length of history blobs: the file has "
                          f"{len(state.history)}, this {solver_type} solver needs {len(history)} "
                          "(was it written for another net or solver type?)")
    log.info("SGDSolver: restoring history")
    with torch.no_grad():
        for i, (h, b) in enumerate(zip(history, state.history)):
            arr = binary.blob_to_array(b)
            if arr.size != h.numel():
                raise SolverError(f"{state_file}: history blob {i} has {arr.size} values, the net's "
                                  f"param has {h.numel()}")
            h.copy_(torch.from_numpy(arr.reshape(-1).copy()).reshape(h.shape))


class PrefixLock:
    """An exclusive ``flock`` on ``<prefix>.lock`` (holding the owner's pid), and the removal of stale
    ``.<prefix>_iter_*.tmp`` files: temporaries of snapshots whose writer (a dead pid) was killed mid-write."""

    def __init__(self, prefix: str):
        import fcntl
        import glob
        d, base = os.path.split(prefix)
        os.makedirs(d or ".", exist_ok=True)
        self.path = prefix + ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self.fd)
            raise SolverError(f"snapshot_prefix '{prefix}' is in use by process {other} (its lock: {self.path}); "
                              "two runs on one prefix would interleave their snapshots: wait for it to end, or "
                              "set another snapshot_prefix") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        stale = []
        for tmp in glob.glob(os.path.join(glob.escape(d or "."), f".{glob.escape(base)}_iter_*.tmp")):
            parts = os.path.basename(tmp).split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            if pid is not None and pid != os.getpid() and not _alive(pid):
                os.unlink(tmp)
                stale.append(tmp)
        # A snapshot killed between its files: the weights and the .trainstate without the .solverstate (written
        # last) are no snapshot. Only netspec's own (a .trainstate beside them) are removed.
        for extra in glob.glob(os.path.join(glob.escape(d or "."), f"{glob.escape(base)}_iter_*.trainstate")):
            stem = extra[:-len(".trainstate")]
            if ".rank" not in os.path.basename(stem) and not os.path.exists(stem + ".solverstate"):
                for path in (stem + ".caffemodel", extra):
                    if os.path.exists(path):
                        os.unlink(path)
                        stale.append(path)
        if stale:
            log.info("Removed %d file(s) of snapshots that killed runs left incomplete: %s", len(stale),
                     ", ".join(stale))

    def release(self):
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
