"""Caffe's solvers, with Caffe's maths (sgd_solver.cpp and friends), not torch.optim's.

Per update, for every learnable blob i (lr_mult 0 included, shared blobs once), as Solver::Step and
SGDSolver::ApplyUpdate do:

  1. clear diffs; ``iter_size`` forward/backward passes accumulate (sum) the diffs;
  2. rate = lr_policy(iter), iter = updates done so far;
  3. clip_gradients >= 0: if the global L2 norm of the *summed* diffs exceeds it, scale all by clip/norm;
  4. diff /= iter_size;
  5. L2: diff += weight_decay*decay_mult_i*w,  L1: diff += weight_decay*decay_mult_i*sign(w);
  6. the type's rule turns diff into the step (SGD: h = momentum*h + rate*lr_mult_i*diff; step = h: the
     history holds the *lr-scaled* velocity, so unlike torch.optim.SGD an lr change does not rescale it);
  7. w -= step.
"""
import logging
import math
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .. import progress as bars
from ..errors import SolverError
from ..net.blob import clear_diff
from ..net.runtime import is_root as _is_root, rank as _rank
from ..proto import caffe_pb2
from .snapshot import PrefixLock as _PrefixLock, check_finite, learned_net_path, load_history, write_snapshot

log = logging.getLogger("netspec")

# -- learning-rate policies (SGDSolver::GetLearningRate); each returns (rate, current_step) ------------------
#   fixed:     base_lr
#   step:      base_lr * gamma ^ floor(iter / stepsize)
#   exp:       base_lr * gamma ^ iter
#   inv:       base_lr * (1 + gamma * iter) ^ (-power)
#   multistep: base_lr * gamma ^ current_step, current_step advanced (at most once per call) when
#              iter >= stepvalue[current_step]
#   poly:      base_lr * (1 - iter / max_iter) ^ power
#   sigmoid:   base_lr * 1 / (1 + exp(-gamma * (iter - stepsize)))


def _fixed(p, it, cs):
    return p.base_lr, cs


def _step(p, it, cs):
    if p.stepsize <= 0:
        raise SolverError("lr_policy 'step' needs stepsize > 0")
    cs = it // p.stepsize
    return p.base_lr * math.pow(p.gamma, cs), cs


def _exp(p, it, cs):
    return p.base_lr * math.pow(p.gamma, it), cs


def _inv(p, it, cs):
    return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power), cs


def _multistep(p, it, cs):
    if cs < len(p.stepvalue) and it >= p.stepvalue[cs]:
        cs += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, cs)
    return p.base_lr * math.pow(p.gamma, cs), cs


def _poly(p, it, cs):
    if it > p.max_iter:
        raise SolverError(f"lr_policy \"poly\": iteration {it} is past max_iter {p.max_iter}, where "
                          f"(1 - iter/max_iter)^power has no real value; raise max_iter to train longer")
    return p.base_lr * math.pow(1.0 - float(it) / float(p.max_iter), p.power), cs


def _sigmoid(p, it, cs):
    z = -p.gamma * (float(it) - float(p.stepsize))
    # 1 / (1 + e^z): e^z overflows a double past z ~ 709, where the rate is 0 to double precision (as Caffe's).
    return p.base_lr * (0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))), cs


LR_POLICIES: Dict[str, Callable] = {
    "fixed": _fixed, "step": _step, "exp": _exp, "inv": _inv,
    "multistep": _multistep, "poly": _poly, "sigmoid": _sigmoid,
}


def learning_rate(param: "caffe_pb2.SolverParameter", it: int, current_step: int = 0):
    """(rate as float32 value, new current_step) for update ``it``."""
    fn = LR_POLICIES.get(param.lr_policy)
    if fn is None:
        raise SolverError(f"Unknown learning rate policy '{param.lr_policy}'. Known: "
                          f"{', '.join(LR_POLICIES)}")
    try:
        rate, cs = fn(param, it, current_step)
    except (ValueError, ZeroDivisionError, OverflowError) as e:
        raise SolverError(f"lr_policy \"{param.lr_policy}\" has no learning rate at iteration {it} with base_lr "
                          f"{param.base_lr}, gamma {param.gamma}, power {param.power}: {e}") from None
    if not math.isfinite(rate):
        raise SolverError(f"lr_policy \"{param.lr_policy}\" gives the learning rate {rate} at iteration {it}")
    return float(np.float32(rate)), cs


class _Update:
    """What an update rule sees: the solver's settings and iteration, the history blobs of the blobs being
    updated (``nhist`` groups of ``n``), and ``scratch()``: one persistent buffer per blob (Caffe's
    ``temp_``), so that no iteration allocates parameter-sized temporaries."""

    def __init__(self, solver: "Solver", history: List[torch.Tensor], n: int):
        self.param, self.iter, self.history = solver.param, solver.iter, history
        self._solver, self._n = solver, n

    def scratch(self) -> List[torch.Tensor]:
        s = self._solver
        if s._temp is None or len(s._temp) != self._n:
            s._temp = [torch.empty_like(h) for h in self.history[:self._n]]
        return s._temp


# -- update rules (ComputeUpdateValue); each turns diffs into the step, in place ------------------------------

def _sgd(s, diffs, rates):
    # history = momentum * history + local_rate * diff; the step (and the diff Caffe leaves) = history.
    # Computed as Caffe's GPU kernel does (sgd_solver.cu, SGDUpdate: g = h = momentum * h + local_rate * g, one
    # fused multiply-add): local_rate * diff, then + momentum * history in one add, then copied to the history.
    # In place, no parameter-sized temporary, and 7 passes over the parameters' memory (CPU axpby + copy: 9).
    hist = s.history
    torch._foreach_mul_(diffs, rates)
    torch._foreach_add_(diffs, hist, alpha=s.param.momentum)
    torch._foreach_copy_(hist, diffs)


def _nesterov(s, diffs, rates):
    # history_prev = history; history = momentum * history + local_rate * diff;
    # step = (1 + momentum) * history - momentum * history_prev. As Caffe's GPU kernel computes it
    # (nesterov_solver.cu, NesterovUpdate): the new history as local_rate * diff plus momentum * history in one
    # fused add, the step as (1 + momentum) * history minus momentum * history_prev in one; all multi-tensor ops.
    hist, prev, m = s.history, s.scratch(), s.param.momentum
    torch._foreach_copy_(prev, hist)
    torch._foreach_mul_(diffs, rates)
    torch._foreach_add_(diffs, hist, alpha=m)  # the new history
    torch._foreach_copy_(hist, diffs)
    torch._foreach_mul_(diffs, 1 + m)
    torch._foreach_add_(diffs, prev, alpha=-m)


def _adagrad(s, diffs, rates):
    # history += diff^2; step = local_rate * diff / (sqrt(history) + delta)
    delta, temp = s.param.delta, s.scratch()
    for d, h, t, r in zip(diffs, s.history, temp, rates):
        h.addcmul_(d, d)
        torch.sqrt(h, out=t).add_(delta)
        d.div_(t).mul_(r)


def _rmsprop(s, diffs, rates):
    # history = rms_decay * history + (1 - rms_decay) * diff^2; step = local_rate * diff / (sqrt(history) + delta)
    delta, decay, temp = s.param.delta, s.param.rms_decay, s.scratch()
    for d, h, t, r in zip(diffs, s.history, temp, rates):
        torch.mul(d, d, out=t)
        h.mul_(decay).add_(t, alpha=1 - decay)
        torch.sqrt(h, out=t).add_(delta)
        d.div_(t).mul_(r)


def _adadelta(s, diffs, rates):
    # Zeiler's AdaDelta as Caffe writes it: gradient and update histories decayed by momentum, delta added
    # inside both square roots, the step scaled by local_rate at the end.
    delta, m, temp = s.param.delta, s.param.momentum, s.scratch()
    n = len(diffs)
    for i, (d, r) in enumerate(zip(diffs, rates)):
        hg, hu, t = s.history[i], s.history[n + i], temp[i]
        torch.mul(d, d, out=t)
        hg.mul_(m).add_(t, alpha=1 - m)
        torch.add(hu, delta, out=t)
        t.div_(hg + delta).sqrt_()
        d.mul_(t)
        torch.mul(d, d, out=t)
        hu.mul_(m).add_(t, alpha=1 - m)
        d.mul_(r)


def _adam(s, diffs, rates):
    # m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    # step = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), t = iter + 1
    b1, b2, eps = s.param.momentum, s.param.momentum2, s.param.delta
    t = s.iter + 1
    correction = math.sqrt(1.0 - math.pow(b2, t)) / (1.0 - math.pow(b1, t))
    n, temp = len(diffs), s.scratch()
    for i, (d, r) in enumerate(zip(diffs, rates)):
        mt, vt, tmp = s.history[i], s.history[n + i], temp[i]
        mt.mul_(b1).add_(d, alpha=1 - b1)
        torch.mul(d, d, out=tmp)
        vt.mul_(b2).add_(tmp, alpha=1 - b2)
        torch.sqrt(vt, out=tmp).add_(eps)
        torch.div(mt, tmp, out=d).mul_(r * correction)


# type -> (rule, number of history blobs per learnable blob)
UPDATE_RULES = {
    "SGD": (_sgd, 1), "Nesterov": (_nesterov, 1), "AdaGrad": (_adagrad, 1),
    "RMSProp": (_rmsprop, 1), "AdaDelta": (_adadelta, 2), "Adam": (_adam, 2),
}


def _check_settings(p: "caffe_pb2.SolverParameter") -> None:
    """Refuse at start what Caffe refuses (or what would only fail after a pass or at the first snapshot)."""
    problems = []
    if p.type == "AdaGrad" and p.momentum != 0:
        problems.append("Momentum cannot be used with AdaGrad.")
    if p.regularization_type not in ("L1", "L2"):
        problems.append(f"Unknown regularization type: {p.regularization_type} (use L2 or L1)")
    if any(n < 0 for n in p.test_iter):
        problems.append(f"test_iter must be >= 0 (0 skips the test pass), got {list(p.test_iter)}")
    if p.iter_size < 1:
        problems.append(f"iter_size must be at least 1, got {p.iter_size}")
    if p.average_loss < 1:
        problems.append(f"average_loss must be at least 1, got {p.average_loss}")
    if p.lr_policy == "step" and p.stepsize <= 0:
        problems.append(f"lr_policy \"step\" needs stepsize > 0, got {p.stepsize}")
    if p.lr_policy == "poly" and p.max_iter <= 0:
        problems.append(f"lr_policy \"poly\" needs max_iter > 0 (it decays to 0 at max_iter), got {p.max_iter}")
    if p.lr_policy == "inv" and p.gamma < 0 and 1 + p.gamma * max(p.max_iter, 0) <= 0:
        problems.append(f"lr_policy \"inv\": 1 + gamma * iter reaches {1 + p.gamma * p.max_iter} by max_iter "
                        f"{p.max_iter} with gamma {p.gamma}; its power has no real value there (use gamma > 0)")
    if p.type == "Adam" and not (0 <= p.momentum < 1 and 0 <= p.momentum2 < 1):
        problems.append(f"Adam needs 0 <= momentum < 1 and 0 <= momentum2 < 1 (beta1, beta2), got "
                        f"{p.momentum} and {p.momentum2}")
    if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
        problems.append("snapshot_format HDF5 is not supported; use BINARYPROTO (the default)")
    if problems:
        raise SolverError("; ".join(problems))


def _resolve(path: str, base_dir: Optional[str], what: str, warned: set) -> str:
    """Caffe resolves solver paths against the working directory; if that fails but the path exists
    relative to the solver file, use that and say so once."""
    if not path or os.path.isabs(path) or os.path.exists(path) or base_dir is None:
        return path
    alt = os.path.join(base_dir, path)
    if not os.path.exists(alt):
        return path
    if what not in warned:
        log.warning("%s '%s' not found relative to the working directory %s; using %s (relative to "
                    "the solver file)", what, path, os.getcwd(), alt)
        warned.add(what)
    return alt


class TestHook:
    """Watches the test passes, as Caffe's Solver::Callback watches the steps. ``Solver.test(i)`` calls, for each
    object in ``solver.test_hooks``: ``begin(solver, i, net)`` before test net i's first batch, which returns the
    names of the blobs it reads besides the outputs (the forward keeps them); ``batch(solver, i, net)`` after each
    forward; ``end(solver, i, net, summary)`` with the pass's ``iter``, ``batches``, ``means`` (each output's mean)
    and ``loss`` (the weighted loss of those means; None without loss outputs). Any object with the three methods
    will do; this class gives do-nothing ones to override. FCN's segmentation scores are one:
    :class:`netspec.solver.seg_scores.SegScores`."""
    __test__ = False  # not a pytest test class

    def begin(self, solver, i, net):
        return ()

    def batch(self, solver, i, net):
        pass

    def end(self, solver, i, net, summary):
        pass


class Solver:
    """pycaffe's solver: ``step(n)``, ``solve()``, ``net``, ``test_nets``, ``iter``, ``snapshot()``,
    ``restore(path)``. The type comes from the solver file (``type``; deprecated ``solver_type`` upgraded).
    ``solver``: the file, or its SolverParameter (``source``: the file it was parsed from, so that it is parsed
    once and relative paths still resolve against its folder). ``test_hooks``: objects that watch the test
    passes (:class:`TestHook`), FCN's segmentation scores (netspec.solver.seg_scores) among them."""

    def __init__(self, solver, *, level: Optional[int] = None, stages=None, device=None, source=None):
        from ..formats import prototxt
        from ..net import runtime
        from ..data.shard import Shard
        from ..net.pycaffe import Net
        if isinstance(solver, caffe_pb2.SolverParameter):
            param = solver
            self.source = os.fspath(source) if source is not None else None
        else:
            self.source = os.fspath(solver)
            if not os.path.exists(self.source):
                raise SolverError(f"{self.source}: solver file not found (working directory {os.getcwd()})")
            param = prototxt.read_solver(self.source)
        base_dir = os.path.dirname(os.path.abspath(self.source)) if self.source else None
        from ..passes.upgrade import upgrade_solver
        param, msgs = upgrade_solver(param)
        for m in msgs:
            log.info(m)
        self.param = param
        rule = UPDATE_RULES.get(param.type)
        if rule is None:
            raise SolverError(f"Unknown solver type '{param.type}'. Known: {', '.join(UPDATE_RULES)}")
        _check_settings(param)
        self._rule, self._nhist = rule
        self._warned: set = set()
        self.device = torch.device(device) if device is not None else runtime.device()
        shard = Shard.current(train=True)
        seed = param.random_seed if param.random_seed >= 0 else None
        if shard.world > 1 and seed is None:
            seed = self._shared_seed()
        if seed is not None:
            runtime.set_random_seed(seed)  # data parallel: the same initial weights and data streams everywhere
        log.info("Initializing solver from parameters:\n%s", prototxt.to_text(param))
        self.net = self._make_train_net(base_dir, level, stages)
        self.test_nets: List[Net] = self._make_test_nets(base_dir, level, stages)
        from .seg_scores import SegScores
        # FCN's scores keep the confusion matrix of every segmentation test pass, so finish() reuses the last
        self.test_hooks: List[TestHook] = [SegScores()]
        if shard.rank:
            runtime.set_random_seed(seed + shard.rank)  # Caffe: random_seed + solver_rank for what runs (Dropout)
        if param.snapshot_prefix:
            param.snapshot_prefix = _resolve(param.snapshot_prefix, base_dir, "snapshot_prefix", self._warned)
        self.iter = 0
        self.current_step = 0
        self._params = self.net.module.learnable_params()
        self.history: List[torch.Tensor] = [torch.zeros_like(lp.tensor) for _ in range(self._nhist)
                                            for lp in self._params]
        self._active_cache = None
        self._temp: Optional[List[torch.Tensor]] = None
        self._losses: List[float] = []
        self._loss_scale = 1.0  # fp16's dynamic loss scale (configure(precision="fp16"))
        self.smoothed_loss = 0.0
        self._action: Optional[Callable[[], str]] = None
        self.requested_early_exit = False
        self._last_snapshot: Optional[str] = None
        if param.weights:
            self.net.copy_from(",".join(p.strip() for w in param.weights for p in w.split(",")))

    # -- nets (Solver::InitTrainNet / InitTestNets) ------------------------------------------------------
    def _net_source(self, which: str, base_dir, path: Optional[str] = None):
        return _resolve(getattr(self.param, which) if path is None else path, base_dir, which, self._warned)

    def _make_train_net(self, base_dir, level, stages):
        from ..net.pycaffe import Net
        p = self.param
        given = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(f"{self.source or 'solver'}: give exactly one of train_net_param, train_net, "
                              f"net_param, net (found: {', '.join(given) or 'none'})")
        f = given[0]
        src = getattr(p, f) if f.endswith("_param") else self._net_source(f, base_dir)
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(p.train_state)
        log.info("Creating training net from %s %s", f, "" if f.endswith("_param") else src)
        return Net(src, phase=caffe_pb2.TRAIN, level=level if level is not None else state.level,
                   stages=stages if stages is not None else list(state.stage), device=self.device)

    def _make_test_nets(self, base_dir, level, stages):
        from ..net.pycaffe import Net
        p = self.param
        sources = [m for m in p.test_net_param] + [self._net_source("test_net", base_dir, t) for t in p.test_net]
        n_explicit = len(sources)
        generic = p.net_param if p.HasField("net_param") else (
            self._net_source("net", base_dir) if p.HasField("net") else None)
        if generic is not None:
            if len(p.test_iter) < n_explicit:
                raise SolverError("test_iter must be specified for each test network")
            sources += [generic] * (len(p.test_iter) - n_explicit)
        elif len(p.test_iter) != n_explicit:
            raise SolverError(f"test_iter must be specified for each test network: {len(p.test_iter)} "
                              f"test_iter for {n_explicit} test nets")
        if p.test_state and len(p.test_state) != len(sources):
            raise SolverError("test_state must be unspecified or specified once per test net")
        nets = []
        for i, src in enumerate(sources):
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            log.info("Creating test net (#%d)", i)
            net = Net(src, phase=caffe_pb2.TEST, level=state.level, stages=list(state.stage),
                      device=self.device)
            net.share_with(self.net)
            nets.append(net)
        return nets

    # -- the loop (Solver::Step / Solve) -------------------------------------------------------------------
    def set_action_function(self, fn: Callable[[], str]):
        """``fn()`` returns 'none', 'stop' or 'snapshot' after each iteration (Caffe's SolverAction)."""
        self._action = fn

    def _update_smoothed_loss(self, loss: float, start_iter: int):
        avg = max(1, self.param.average_loss)
        if len(self._losses) < avg:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self._losses[idx]) / avg
            self._losses[idx] = loss

    def configure(self, precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                  checkpoint: bool = False):
        """Speed settings (see Net.configure). fp16 uses a dynamic loss scale; bf16 and fp32 need none."""
        self.net.configure(precision, channels_last, compile, checkpoint)
        for t in self.test_nets:
            t.configure(precision, channels_last, False)
        self._loss_scale = 2.0 ** 16 if precision == "fp16" else 1.0

    def _shared_seed(self) -> int:
        """Rank 0's draw of a seed, sent to every process (no random_seed in a multi-process run)."""
        import torch.distributed as dist
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.randint(0, 2 ** 31 - 1, (1,), dtype=torch.int64).to(dev)
        dist.broadcast(t, 0)
        return int(t.item())

    def forward_backward(self) -> float:
        return self.net.forward_backward(self._loss_scale)

    def _reduce_gradients(self) -> bool:
        """Average the gradients over processes (Caffe's multi-GPU meaning) and undo the fp16 loss scale.
        Returns False when the step must be skipped (fp16 overflow)."""
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        scale = self._loss_scale
        if not distributed and scale == 1.0:
            return True
        if distributed:  # every rank reduces every blob, in the same order, even one no gradient reached here
            for lp in self._params:
                if lp.tensor.grad is None:
                    lp.tensor.grad = torch.zeros_like(lp.tensor)
        grads = [lp.tensor.grad for lp in self._params if lp.tensor.grad is not None]
        if distributed:
            n = dist.get_world_size()
            for g in grads:
                dist.all_reduce(g)
            torch._foreach_mul_(grads, 1.0 / n)
        if scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / scale)
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                self._loss_scale = scale / 2
                log.warning("Iteration %d: fp16 gradient overflow; skipping the update, loss scale now %g",
                            self.iter, self._loss_scale)
                return False
        return True

    def warn_zero_layers(self):
        """Warn by name about layers of the training net whose every blob is still zero and that will stay so or
        learn nothing (netspec.net.weights.warn_zero_layers, with its initialisation hints)."""
        from ..net.weights import warn_zero_layers
        warn_zero_layers(self.net)

    def finish(self, out=None):
        """After solve(): FCN's score.py lines of every segmentation test net (netspec.solver.seg_scores, which
        this delegates to: the last test pass's confusion matrix when it ran at the final iteration, else one
        pass now). Returns the scores per test net."""
        from .seg_scores import SegScores
        return SegScores.attach(self).finish(self, out)

    def step(self, iters: int):
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._losses = []
        self.smoothed_loss = 0.0
        t0 = time.time()
        last_iter = self.iter
        while self.iter < stop_iter:
            for lp in self._params:  # ClearParamDiffs (over the learnable blobs, as Caffe's)
                clear_diff(lp.tensor)
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for _ in range(max(1, p.iter_size)):
                loss += self.forward_backward()
            loss /= max(1, p.iter_size)
            ok = self._reduce_gradients()
            if not math.isfinite(loss):
                last = self._last_snapshot or "none written yet"
                raise SolverError(f"Iteration {self.iter}: loss is {loss}; stopping. Last good snapshot: {last}. "
                                  "Lower base_lr, check the data and labels, or use clip_gradients")
            self._update_smoothed_loss(loss, start_iter)
            if display:
                lapse = time.time() - t0
                per_s = (self.iter - last_iter) / (lapse or 1)
                eta = ""
                if per_s > 0 and p.max_iter > self.iter:
                    eta = f", ETA {_hms((p.max_iter - self.iter) / per_s)}"
                log.info("Iteration %d (%.6g iter/s, %.6gs/%d iters), loss = %.6g%s", self.iter, per_s,
                         lapse, p.display, self.smoothed_loss, eta)
                t0, last_iter = time.time(), self.iter
                self._log_outputs(self.net, "Train", divisor=1)
            if ok:
                self.apply_update()
            self.iter += 1
            action = self._action() if self._action else "none"
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self._snapshot_all_ranks()
            if action == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file: Optional[str] = None):
        """Solver::Solve. The root process holds ``<snapshot_prefix>.lock`` for the run (two runs on one prefix
        would interleave their snapshots) and first removes temporary snapshot files that killed runs left."""
        lock = _PrefixLock(self.param.snapshot_prefix) if _is_root() and self.param.snapshot_prefix else None
        try:
            self._solve(resume_file)
        finally:
            if lock is not None:
                lock.release()

    def _solve(self, resume_file: Optional[str] = None):
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self._snapshot_all_ranks()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            self.net.forward()
            loss = sum(float(self.net.blobs[o].data.sum()) * w for o, w in self.net.loss_outputs())
            log.info("Iteration %d, loss = %.6g", self.iter, loss)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _log_outputs(self, net, kind: str, divisor: float, values=None):
        idx = 0
        weights = dict(net.loss_outputs())
        for o in net.outputs:
            data = values[o] if values is not None else net.blobs[o].data
            for v in data.reshape(-1):
                v = float(v) / divisor
                w = weights.get(o, 0.0)
                extra = f" (* {w:.6g} = {w * v:.6g} loss)" if w else ""
                log.info("    %s net output #%d: %s = %.6g%s", kind, idx, o, v, extra)
                idx += 1

    # -- testing (Solver::TestAll / Test) ---------------------------------------------------------------------
    def test_all(self):
        """Caffe's TestAll; in a multi-process run only the root process tests (as Caffe's root solver)."""
        results = []
        if not _is_root():
            return results
        for i in range(len(self.test_nets)):
            results.append(self.test(i))
        return results

    def test(self, i: int, log_outputs: bool = True):
        """Caffe's Test(i): ``test_iter[i]`` forwards of test net i, the mean of each output logged; the
        ``test_hooks`` see the pass (:class:`TestHook`). A bar shows on stderr when the pass takes more than a
        few seconds."""
        p = self.param
        if log_outputs:
            log.info("Iteration %d, Testing net (#%d)", self.iter, i)
        net = self.test_nets[i]
        sums = None
        loss = 0.0
        n = p.test_iter[i]
        if n == 0:  # test_iter: 0 (or --test-iter 0) skips the pass
            log.info("Test net #%d: test_iter is 0, no test pass", i)
            return {}
        loss_outputs = net.loss_outputs()
        retain = tuple(dict.fromkeys(b for h in self.test_hooks for b in h.begin(self, i, net)))
        with torch.no_grad():
            for _ in bars.progress(range(n), desc=f"test net #{i}", unit="batch"):
                out = net.forward_only(retain=retain)
                if p.test_compute_loss:
                    loss += sum(float(out[o].sum()) * w for o, w in loss_outputs)
                if sums is None:
                    sums = {o: out[o].astype("float64").copy() for o in net.outputs}
                else:
                    for o in net.outputs:
                        sums[o] += out[o]
                for h in self.test_hooks:
                    h.batch(self, i, net)
        if p.test_compute_loss:
            log.info("Test loss: %.6g", loss / max(1, n))
        means = {o: v / max(1, n) for o, v in (sums or {}).items()}
        if log_outputs:
            self._log_outputs(net, "Test", 1, means)
        summary = {"iter": self.iter, "batches": n, "means": means,
                   "loss": (sum(float(np.sum(means[o])) * w for o, w in loss_outputs if o in means)
                            if loss_outputs else None)}
        for h in self.test_hooks:
            h.end(self, i, net, summary)
        return means

    # -- the update ----------------------------------------------------------------------------------------
    def apply_update(self):
        """SGDSolver::ApplyUpdate: rate, ClipGradients, then Normalize, Regularize and ComputeUpdateValue per
        blob (batched over blobs here), then Net::Update (w -= diff)."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        with torch.no_grad():
            specs, hist = self._active()
            params = [lp.tensor for lp in specs]
            diffs = []
            for t in params:
                if t.grad is None:  # no gradient reached it: Caffe's diff is still the cleared zeros
                    t.grad = torch.zeros_like(t)
                diffs.append(t.grad)
            self._clip_gradients(diffs)
            self._normalize(diffs)
            self._regularize(specs, diffs)
            rates = [float(np.float32(rate * lp.lr_mult)) for lp in specs]  # Caffe's float local_rate
            self._rule(_Update(self, hist, len(params)), diffs, rates)   # ComputeUpdateValue
            torch._foreach_sub_(params, diffs)
            if len(specs) != len(self._params):  # a skipped blob's diff ends as its (zero) history, as in Caffe
                active = {id(t) for t in params}
                for lp in self._params:
                    if id(lp.tensor) not in active and lp.tensor.grad is not None:
                        lp.tensor.grad.zero_()

    def _clip_gradients(self, diffs):
        """clip_gradients >= 0: scale every diff by clip / norm when the L2 norm over every learnable blob
        (a skipped one's diff may be forced) exceeds it."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        norm = math.sqrt(sum(float((lp.tensor.grad.double() ** 2).sum()) for lp in self._params
                             if lp.tensor.grad is not None))
        if norm > clip:
            scale = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %.6g > %.6g) by scale factor %.6g",
                     norm, clip, scale)
            torch._foreach_mul_(diffs, scale)

    def _normalize(self, diffs):
        """diff /= iter_size (the passes summed their diffs)."""
        if self.param.iter_size > 1:
            torch._foreach_mul_(diffs, 1.0 / self.param.iter_size)

    def _regularize(self, specs, diffs):
        """L2: diff += weight_decay * decay_mult * w;  L1: diff += weight_decay * decay_mult * sign(w)."""
        p = self.param
        reg = p.regularization_type
        if not p.weight_decay:
            return
        groups: Dict[float, tuple] = {}  # one _foreach_add_ per distinct local decay (the same add_ per blob)
        for lp, d in zip(specs, diffs):
            local = p.weight_decay * lp.decay_mult
            if local:
                ds, ws = groups.setdefault(local, ([], []))
                ds.append(d)
                ws.append(lp.tensor if reg == "L2" else torch.sign(lp.tensor))
        for local, (ds, ws) in groups.items():
            torch._foreach_add_(ds, ws, alpha=local)

    def _active(self):
        """The blobs the update must touch, and their history blobs. Under SGD and Nesterov a blob with
        lr_mult 0 whose history is zero keeps a zero history for ever (momentum * 0 + 0 * diff), so its step is
        exactly 0 and it is skipped: a frozen trunk costs nothing. Every other rule keeps state even at rate 0
        (Adam's moments, AdaGrad's sum), which Caffe writes into its snapshots, so those touch every blob."""
        if self._active_cache is None:
            n = len(self._params)
            keep = list(range(n))
            if self.param.type in ("SGD", "Nesterov"):
                keep = [i for i, lp in enumerate(self._params) if lp.lr_mult != 0 or bool(self.history[i].any())]
            hist = [self.history[k * n + i] for k in range(self._nhist) for i in keep]
            self._active_cache = ([self._params[i] for i in keep], hist)
        return self._active_cache

    # -- snapshots (Solver::Snapshot / Restore) -------------------------------------------------------------
    def snapshot_filename(self, ext: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{ext}"

    def snapshot(self):
        """Solver::Snapshot: ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` (Caffe's files), plus the
        ``.trainstate`` sidecar for exact resume (netspec.solver.train_state); the solverstate, written last, marks a
        complete snapshot (the files: netspec.solver.snapshot)."""
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            raise SolverError("snapshot_format HDF5 is not supported; use BINARYPROTO (the default)")
        check_finite(self)
        model, sfile = self.snapshot_filename(".caffemodel"), self.snapshot_filename(".solverstate")
        write_snapshot(self, model, sfile)
        self._last_snapshot = sfile
        return model, sfile

    def _snapshot_all_ranks(self):
        """The root writes the snapshot; every other rank of a multi-process run writes its own training state
        beside it (its data shard and generators differ), so every rank resumes where it was."""
        if _is_root():
            self.snapshot()
        else:
            from . import train_state
            sfile = self.snapshot_filename(".solverstate")
            os.makedirs(os.path.dirname(sfile) or ".", exist_ok=True)
            train_state.save(train_state.sidecar(sfile, _rank()), train_state.capture(self, [self.net]))

    def restore(self, state_file: str):
        from ..formats import binary
        from . import train_state
        if not os.path.isfile(state_file):
            raise SolverError(f"{state_file}: snapshot not found (working directory {os.getcwd()})")
        state = binary.read_solverstate(state_file)
        self._last_snapshot = state_file
        self.iter = state.iter
        if state.learned_net:
            self.net.copy_from(learned_net_path(state_file, state.learned_net, state.iter))
        self.current_step = state.current_step
        load_history(state_file, state, self.history, self.param.type)
        self._active_cache = self._temp = None
        extra = train_state.sidecar(state_file, _rank())
        if os.path.isfile(extra):
            train_state.apply(self, [self.net] + self.test_nets, train_state.load(extra), extra)
            log.info("Restored the data streams and random generators from %s", extra)
        else:
            log.warning("%s has no %s beside it (a snapshot of Caffe or of another tool): the data streams and "
                        "random generators restart, so the resumed run will not repeat the uninterrupted one "
                        "exactly", state_file, os.path.basename(extra))


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class SGDSolver(Solver):
    pass


NesterovSolver = AdaGradSolver = RMSPropSolver = AdaDeltaSolver = AdamSolver = SGDSolver


def get_solver(path, **kw) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver of the type the file names."""
    return Solver(path, **kw)
