"""Batches built ahead of time by worker threads or processes, handed out strictly in order.

A *batch source* splits loading a batch in two:

* ``plan()``, cheap and sequential, runs in the consumer's thread: it takes the next batch's items (LMDB
  keys, list lines) and advances the source's position, shuffle order and batch counter. It returns a
  picklable task whose ``index`` is the batch number and ``items`` the list of what the batch holds.
* ``build(task, out)``, the expensive part (decode, transform), depends on the task alone, so any worker may
  run it. Random augmentation draws from a generator seeded with (seed, ``task.index``): a batch is the same
  whichever worker builds it and however many there are, and the same as loading inline. Output arrays come
  from ``out.array(shape)`` (pinned memory for a CUDA consumer, shared memory in a worker process), and
  ``out.item(i)`` says which item is being decoded, so a worker process that dies can be reported by record.
* ``item_name(task, i)`` names item ``i`` for error messages; ``get_state()`` / ``set_state()`` save and
  restore the planner (what resuming from a pickle continues from).

``Loader(source, workers, depth)`` keeps ``max(depth, workers)`` batches in flight; batch ``k`` goes to
worker ``k % workers`` and is read back from that worker's own queue, so results come back in order without
reordering. ``kind="thread"``: OpenCV's decoders and numpy's array loops release the GIL. ``kind="process"``:
forked worker processes, each opening its own read-only LMDB environment (``lock=False``); batches come
back through shared memory and are copied once into the consumer's (pinned) tensors.

Configuration: ``NETSPEC_LOADER_WORKERS`` (default 1: one background worker; 0 loads in the calling thread)
and ``NETSPEC_LOADER_KIND`` (``thread``, the default, or ``process``).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import traceback
from multiprocessing import shared_memory
from typing import Optional, Tuple

import numpy as np

from ..errors import DataError

log = logging.getLogger("netspec")

__all__ = ["BatchTask", "Loader", "loader_workers", "loader_kind", "ArrayOut", "build_inline"]

KINDS = ("thread", "process")

#: What ``plan()`` returns: the batch number and the items (keys, line indices) the batch holds.
BatchTask = collections.namedtuple("BatchTask", "index items")


#: Set by the program (tools/train.py's --loader-workers/--loader-kind), before the environment is consulted.
_CHOSEN = {"workers": None, "kind": None}


def set_loader(workers=None, kind=None) -> None:
    """Loader workers per data layer and their kind for data layers built from now on (None: the environment's
    NETSPEC_LOADER_WORKERS / NETSPEC_LOADER_KIND, else 1 thread)."""
    if workers is not None and int(workers) < 0:
        raise DataError(f"loader workers {workers}: give 0 (load in forward) or more")
    if kind is not None and kind not in KINDS:
        raise DataError(f"loader kind {kind!r}: use one of {', '.join(KINDS)}")
    _CHOSEN.update(workers=None if workers is None else int(workers), kind=kind)


def loader_workers(default: int = 1) -> int:
    """The number set with :func:`set_loader`, else ``NETSPEC_LOADER_WORKERS`` (default 1); 0 when
    ``NETSPEC_DATA_PREFETCH=0``."""
    if os.environ.get("NETSPEC_DATA_PREFETCH", "1") in ("0", "", "false", "False"):
        return 0
    if _CHOSEN["workers"] is not None:
        return _CHOSEN["workers"]
    raw = os.environ.get("NETSPEC_LOADER_WORKERS", "")
    if not raw.strip():
        return default
    try:
        n = int(raw)
    except ValueError:
        raise DataError(f"NETSPEC_LOADER_WORKERS={raw!r}: give a number of loader workers (0 = none)") from None
    if n < 0:
        raise DataError(f"NETSPEC_LOADER_WORKERS={raw!r} must be >= 0")
    return n


def loader_kind() -> str:
    if _CHOSEN["kind"] is not None:
        return _CHOSEN["kind"]
    kind = os.environ.get("NETSPEC_LOADER_KIND", "thread").strip().lower() or "thread"
    if kind not in KINDS:
        raise DataError(f"NETSPEC_LOADER_KIND={kind!r}: use one of {', '.join(KINDS)}")
    return kind


# ----------------------------------------------------------------------------------------------------------
# output buffers
# ----------------------------------------------------------------------------------------------------------
class ArrayOut:
    """Where ``build`` puts a batch: plain numpy arrays (loading inline)."""

    def array(self, shape, dtype=np.float32) -> np.ndarray:
        return np.empty(shape, dtype)

    def item(self, i: int) -> None:
        pass

    def finish(self, arrays):
        return tuple(arrays)


class _TensorOut(ArrayOut):
    """numpy views of torch tensors (pinned when the consumer copies to a GPU): ``finish`` returns the tensors
    themselves, so a non_blocking copy keeps its pinned block alive until it is done."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._made = []

    def array(self, shape, dtype=np.float32) -> np.ndarray:
        import torch
        t = torch.empty(tuple(shape), dtype=_torch_dtype(dtype), pin_memory=self.pin)
        a = t.numpy()
        self._made.append((a, t))
        return a

    def finish(self, arrays):
        return tuple(_as_tensor(a, self._made, self.pin) for a in arrays)


def _torch_dtype(dtype):
    import torch
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
            np.dtype(np.uint8): torch.uint8, np.dtype(np.int64): torch.int64,
            np.dtype(np.int32): torch.int32}[np.dtype(dtype)]


def _as_tensor(a, made, pin):
    import torch
    for arr, t in made:
        if arr is a:
            return t
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory() if pin else t


class _SegmentPool:
    """A worker process's shared-memory segments, reused batch after batch: a fresh segment costs a page fault
    per 4 KiB in both processes (about 15 ms for a 12 MB batch), a reused one nothing. The worker owns them
    (creates and unlinks); the consumer maps each once and says when it has copied a batch out."""

    KEEP = 8  # free segments kept beyond this many are unlinked

    def __init__(self):
        self.free = []
        self.sent = {}
        self.dropped = []  # unlinked since the last result: the consumer unmaps them
        self.count = 0

    def take(self, nbytes: int):
        fits = [s for s in self.free if s.size >= nbytes]
        if fits:
            seg = min(fits, key=lambda s: s.size)
            self.free.remove(seg)
            return seg
        self.count += 1
        try:  # named after the worker, so the consumer can remove them if the worker dies
            return shared_memory.SharedMemory(name=f"{_segment_prefix(os.getppid(), os.getpid())}{self.count}",
                                              create=True, size=nbytes)
        except FileExistsError:  # pragma: no cover - left by an earlier process with this pid
            return shared_memory.SharedMemory(create=True, size=nbytes)

    def give_back(self, segs):
        self.free.extend(segs)
        while len(self.free) > self.KEEP:
            self._drop(min(self.free, key=lambda s: s.size))

    def released(self, names):
        self.give_back([self.sent.pop(n) for n in names if n in self.sent])

    def _drop(self, seg):
        self.free.remove(seg)
        self.dropped.append(seg.name)
        seg.close()
        seg.unlink()

    def close(self):
        for seg in self.free + list(self.sent.values()):
            try:
                seg.close()
            except BufferError:  # pragma: no cover - a view survived; the mapping goes with the process
                pass
            seg.unlink()
        self.free, self.sent = [], {}


def _segment_prefix(consumer: int, worker: int) -> str:
    return f"netspec_{consumer}_{worker}_"


def _unlink_segments_of(pid: int):
    """Remove the shared-memory segments our dead worker process ``pid`` left (Linux lists them in /dev/shm)."""
    prefix = _segment_prefix(os.getpid(), pid)
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    except OSError:  # pragma: no cover - no /dev/shm: the resource tracker removes them at exit
        return
    for n in names:
        try:
            seg = shared_memory.SharedMemory(name=n)
        except FileNotFoundError:  # pragma: no cover
            continue
        seg.close()
        seg.unlink()


class _SharedOut(ArrayOut):
    """Arrays in a worker process's shared-memory segments."""

    def __init__(self, pool: _SegmentPool, progress):
        self.pool = pool
        self.progress = progress
        self._made = []  # (array, segment)

    def array(self, shape, dtype=np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        seg = self.pool.take(nbytes)
        self._made.append((np.ndarray(shape, dtype, buffer=seg.buf), seg))
        return self._made[-1][0]

    def item(self, i: int) -> None:
        self.progress[1] = i

    def finish(self, arrays):
        """(segment name, shape, dtype) per array, or the array itself when it is not in shared memory."""
        out = []
        for a in arrays:
            seg = next((s for m, s in self._made if m is a), None)
            out.append((seg.name, a.shape, a.dtype.str) if seg is not None else np.ascontiguousarray(a))
        return out

    def settle(self, payload):
        """Hand the segments of a sent ``payload`` to the pool as in use; the others back as free."""
        names = {e[0] for e in payload or () if isinstance(e, tuple)}
        segs = [s for _, s in self._made]
        self._made = []  # the views go first
        for seg in segs:
            if seg.name in names:
                self.pool.sent[seg.name] = seg
            else:
                self.pool.give_back([seg])


# ----------------------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------------------
def _thread_main(build, make_out, tasks, results, stopping):
    while True:
        item = tasks.get()
        if item is None:
            return
        if stopping.is_set():  # closing: skip the read-ahead still queued
            continue
        index, task = item
        try:
            out = make_out()
            results.put((index, True, out.finish(build(task, out))))
        except BaseException as e:  # delivered to the consumer
            results.put((index, False, e))
        del item, task


class _ThreadWorker:
    def __init__(self, source, pin: bool, name: str):
        self.tasks: "queue.SimpleQueue" = queue.SimpleQueue()
        self.results: "queue.SimpleQueue" = queue.SimpleQueue()
        # The thread holds the source's build method only, never the module that owns the loader, so that
        # module can still be garbage collected (its finalizer stops the thread).
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=_thread_main, name=name, daemon=True,
                                       args=(source.build, lambda: _TensorOut(pin), self.tasks, self.results,
                                             self.stopping))
        self.thread.start()

    def submit(self, index, task):
        self.tasks.put((index, task))

    def result(self, index, describe) -> Tuple[bool, object]:
        while True:
            try:
                got, ok, value = self.results.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise DataError(f"the data loader thread {self.thread.name} stopped unexpectedly while "
                                    f"loading batch {index} ({describe(None)})") from None
                continue
            if got == index:
                return ok, value

    def stop(self, wait: bool):
        self.stopping.set()
        self.tasks.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=None if wait else 5)


def _process_main(source, tasks, results, progress):
    # No cv2 call that touches OpenCV's thread pool here: the pool was forked mid-state (see _opencv_forkable);
    # the worker runs OpenCV serially, as the parent had it at fork time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    pool = _SegmentPool()
    try:
        while True:
            try:
                msg = tasks.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            if msg[0] == "release":
                pool.released(msg[1])
                continue
            if progress[2]:  # closing: skip the read-ahead still queued
                continue
            _, index, task = msg
            progress[0], progress[1] = index, -1
            out = _SharedOut(pool, progress)
            try:
                payload = out.finish(source.build(task, out))
                result = (index, True, payload)
            except BaseException as e:
                payload, result = None, (index, False, _portable(e))
                del e
            out.settle(payload)
            dropped, pool.dropped = pool.dropped, []
            results.send(result + (dropped,))
    finally:
        pool.close()


def _portable(e: BaseException):
    """``e`` in a form that pickles, with its cause and the worker's traceback attached as a note."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    cause = e.__cause__
    try:
        pickle.dumps(cause)
    except Exception:
        cause = None
    try:
        pickle.dumps(e)
        exc = e
    except Exception:
        exc = DataError(f"{type(e).__name__}: {e}")
    seen, x = set(), e
    while x is not None and id(x) not in seen:  # tracebacks hold the frames that hold the batch's arrays
        seen.add(id(x))
        x.__traceback__ = None
        x = x.__cause__ or x.__context__
    try:
        exc.add_note(f"(raised in data loader worker process {os.getpid()}; its traceback:)\n{tb}")
    except AttributeError:  # pragma: no cover - Python < 3.11
        pass
    return exc, cause


def _context():
    # fork, as torch's DataLoader on Linux: a worker starts at once, needs nothing pickled, and the script that
    # built the net is not re-imported (spawn and forkserver would run a script without a __main__ guard
    # again). A worker uses numpy, OpenCV and LMDB only: no torch op, no CUDA, no lock shared with the parent
    # (the LMDB environment table is reset in the child, see lmdb_io).
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")  # pragma: no cover - not POSIX


@contextlib.contextmanager
def _opencv_forkable():
    """Fork with OpenCV's thread pool shut down, then give the parent its threads back.

    OpenCV's pthreads pool does not survive fork: its worker threads are gone in the child but their condition
    variables still count them as waiters, so the child's first call that reconfigures the pool
    (cv2.setNumThreads, or a parallel_for_ after it) blocks for ever in pthread_cond_destroy. With the pool at
    one thread during the fork the child inherits none, and one worker process runs OpenCV on one core.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class _ProcessWorker:
    def __init__(self, source, pin: bool, name: str):
        ctx = _context()
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()  # shared with the workers: a segment of a killed worker is unlinked
        self.pin = pin
        task_r, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_w = ctx.Pipe(duplex=False)
        self.progress = ctx.RawArray("q", 3)  # batch, item being built; 1 = stop
        self.progress[0] = self.progress[1] = -1
        self.proc = ctx.Process(target=_process_main, name=name, daemon=True,
                                args=(source, task_r, result_w, self.progress))
        self.proc.start()
        task_r.close()
        result_w.close()
        self.maps = {}  # segment name -> our mapping of it

    def _send(self, msg):
        try:
            self.tasks.send(msg)
        except (BrokenPipeError, OSError):
            pass  # the worker died: result() reports it

    def submit(self, index, task):
        self._send(("task", index, task))

    def _died(self, index, describe) -> DataError:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        at = self.progress[1] if self.progress[0] == index else None
        what = describe(at if at is not None and at >= 0 else None)
        return DataError(f"data loader worker process {self.proc.pid} died ({how}) while loading batch {index}: "
                         f"{what}. A crash inside a decoder (OpenCV, libjpeg) or the OOM killer ends a worker "
                         "this way; load with NETSPEC_LOADER_KIND=thread or NETSPEC_LOADER_WORKERS=0 to see the "
                         "error in the training process")

    def _unmap(self, names):
        for n in names:
            seg = self.maps.pop(n, None)
            if seg is not None:
                seg.close()

    def _copy_out(self, payload):
        out = _TensorOut(self.pin)
        arrays = []
        for entry in payload:
            if isinstance(entry, np.ndarray):
                dst = out.array(entry.shape, entry.dtype)
                dst[...] = entry
            else:
                name, shape, dtype = entry
                seg = self.maps.get(name)
                if seg is None:
                    seg = self.maps[name] = shared_memory.SharedMemory(name=name)
                dst = out.array(shape, dtype)
                np.copyto(dst, np.ndarray(shape, np.dtype(dtype), buffer=seg.buf))
            arrays.append(dst)
        self._send(("release", [e[0] for e in payload if isinstance(e, tuple)]))
        return out.finish(arrays)

    def result(self, index, describe) -> Tuple[bool, object]:
        while True:
            ready = multiprocessing.connection.wait([self.results, self.proc.sentinel])
            if self.results in ready:
                try:
                    got, ok, value, dropped = self.results.recv()
                except (EOFError, OSError):
                    err = self._died(index, describe)
                    self._unmap(list(self.maps))
                    _unlink_segments_of(self.proc.pid)
                    raise err from None
                self._unmap(dropped)
                if not ok:
                    exc, cause = value
                    if cause is not None:
                        exc.__cause__ = cause
                    return False, exc
                if got != index:  # pragma: no cover - cannot happen: one worker, one FIFO
                    continue
                return True, self._copy_out(value)
            if not self.results.poll():
                err = self._died(index, describe)
                self._unmap(list(self.maps))
                _unlink_segments_of(self.proc.pid)  # the worker cannot remove them any more
                raise err

    def stop(self, wait: bool):
        # The worker has its own copy of the source, so the consumer may go on at once; it finishes the batch
        # it is building (and removes its segments) unless that takes long.
        self.progress[2] = 1
        self._send(None)
        self.proc.join(timeout=30 if wait else 5)
        if self.proc.is_alive():  # pragma: no cover - stuck in a decoder
            self.proc.terminate()
            self.proc.join(timeout=5)
        self._unmap(list(self.maps))
        if self.proc.exitcode != 0:
            _unlink_segments_of(self.proc.pid)
        self.tasks.close()
        self.results.close()


# ----------------------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------------------
class Loader:
    """Batches of ``source`` in plan order, built ahead by ``workers`` threads or processes.

    ``next()`` returns the next batch as a tuple of CPU torch tensors (pinned when ``pin``). A failed batch
    raises there (the loader then stops; the batch counts as consumed). ``consumed_state`` is the source's
    planner state after the last batch handed out: ``source.set_state(loader.consumed_state)`` after
    ``close()`` drops the read-ahead.
    """

    def __init__(self, source, workers: int, depth: int = 4, kind: str = "thread", pin: bool = False,
                 name: str = "netspec-loader"):
        if workers < 1:
            raise ValueError("Loader needs at least one worker (load inline without one)")
        if kind not in KINDS:
            raise DataError(f"loader kind {kind!r}: use one of {', '.join(KINDS)}")
        self.source = source
        self.kind = kind
        self.pin = pin
        self.in_flight = max(int(depth), int(workers), 1)
        self.consumed_state = source.get_state()
        self._pending = collections.deque()  # (index, task, state after planning it)
        if kind == "thread":
            self._workers = [_ThreadWorker(source, pin, f"{name}-{i}") for i in range(workers)]
        else:
            with _opencv_forkable():
                self._workers = [_ProcessWorker(source, pin, f"{name}-{i}") for i in range(workers)]
        self._closed = False

    @property
    def workers(self) -> int:
        return len(self._workers)

    def _submit(self):
        task = self.source.plan()
        index = task.index
        self._pending.append((index, task, self.source.get_state()))
        self._workers[index % len(self._workers)].submit(index, task)

    def next(self):
        if self._closed:
            raise DataError("the data loader was closed")
        while len(self._pending) < self.in_flight:
            self._submit()
        index, task, state = self._pending.popleft()
        self._submit()  # keep the workers busy while the consumer computes
        worker = self._workers[index % len(self._workers)]

        def describe(i):
            if i is None:
                first, last = self.source.item_name(task, 0), self.source.item_name(task, len(task.items) - 1)
                return first if len(task.items) == 1 else f"items {first} .. {last}"
            return self.source.item_name(task, i)
        try:
            ok, value = worker.result(index, describe)
        except DataError:  # the worker died: its batch counts as read
            self.consumed_state = state
            self.close()
            raise
        except BaseException:  # interrupted while waiting: the batch was not handed out
            self.close()
            raise
        self.consumed_state = state
        if not ok:
            self.close()
            raise value
        return value

    def close(self, wait: bool = True):
        """Stop the workers. ``wait`` joins them for sure (each finishes the batch it is building)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.stop(wait)
            except Exception:  # pragma: no cover - closing must not fail
                log.debug("closing a data loader worker failed", exc_info=True)
        self._pending.clear()

    def rewind(self):
        """Close, and put the source back where the consumer is (drops the read-ahead)."""
        self.close()
        self.source.set_state(self.consumed_state)


def build_inline(source, out: Optional[ArrayOut] = None):
    """One batch of ``source`` loaded in the calling thread (numpy arrays)."""
    out = out or ArrayOut()
    return out.finish(source.build(source.plan(), out))
