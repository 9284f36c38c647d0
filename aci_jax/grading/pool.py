"""Grader: a pool of killable worker processes with a hard per-comparison wall-clock limit.

Workers are fresh interpreters (``python -m aci_jax.grading.worker`` via subprocess: exec, never a
fork of this process, which may hold JAX and threads). One dispatcher thread owns all workers:
it hands each idle worker a chunk of pending comparisons, reads verdicts as they stream back,
and kills (SIGKILL) a worker whose current comparison has run longer than ``timeout`` seconds;
that comparison is reported as ``status="timeout"`` (not equal), the rest of its chunk is
re-queued, and a replacement worker is started. Verdicts are cached by (gold, pred).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Iterable

from .equiv import DEFAULT_REL_TOL
from .extract import GOLD_STYLES, extract_answer, extract_gold, fallback_mode

__all__ = ["GradeResult", "Grader", "ENGINES"]

ENGINES = ("native", "math_verify")
STATUSES = ("ok", "timeout", "parse_error")
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LIVE: "weakref.WeakSet[Grader]" = weakref.WeakSet()


@dataclass(frozen=True)
class GradeResult:
    """Verdict for one (gold, pred) pair. ``status``: ok | timeout | parse_error."""

    equal: bool
    status: str
    pred_extracted: str | None

    def to_json(self) -> dict:
        return {"equal": self.equal, "status": self.status, "pred_extracted": self.pred_extracted}


class _Worker:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aci_jax.grading.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True,  # its own process group: a Ctrl-C to the trainer is ours to handle
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.chunk: collections.deque = collections.deque()  # task ids in flight, in order
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc.wait()


class Grader:
    """Pool of grading workers.

    Args:
      num_workers: worker processes (default: min(4, cpu count)).
      timeout: hard wall-clock limit per comparison, seconds (default 5). Measured from the moment
        the worker starts that comparison, not from submission.
      rel_tol: relative tolerance used when one side is a decimal approximation.
      engine: "native" (our rules) or "math_verify" (the math-verify package, same pool/limits).
      gold_style: how ``extract_gold`` reads gold strings ("auto", "math", "gsm8k", "plain").
      fallback: what a response without a box answers with (``extract_answer``): "none",
        "answer_is" ("the answer is X"; True means this), "last_number" (that, else the
        response's last number). Config key ``grader.fallback``.
      cache_size: max cached verdicts (LRU). Timeouts are cached too (they repeat).
      memory_limit_mb: address-space limit per worker (None: no limit).
      chunk: max comparisons handed to a worker at once (fewer pipe round trips).
    """

    def __init__(self, num_workers: int | None = None, *, timeout: float = 5.0,
                 rel_tol: float = DEFAULT_REL_TOL, engine: str = "native", gold_style: str = "auto",
                 fallback: bool | str = "none", cache_size: int = 200_000,
                 memory_limit_mb: int | None = 3072, chunk: int = 16,
                 startup_timeout: float = 120.0):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        if gold_style not in GOLD_STYLES:
            raise ValueError(f"unknown gold style {gold_style!r}; expected one of {GOLD_STYLES}")
        self.num_workers = num_workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout, self.rel_tol, self.engine = float(timeout), float(rel_tol), engine
        self.gold_style, self.fallback = gold_style, fallback_mode(fallback)
        self.cache_size, self.chunk, self.startup_timeout = cache_size, max(1, chunk), startup_timeout
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["ACI_GRADER_MEMORY_MB"] = str(memory_limit_mb or 0)
        if engine == "math_verify":
            env["ACI_GRADER_PRELOAD_MV"] = "1"
        self._env = env
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._inflight: dict[tuple, Future] = {}
        self._pending: collections.deque = collections.deque()  # task ids
        self._tasks: dict[int, tuple] = {}  # id -> (key, gold, pred)
        self._next_id = 0
        self._closed = False
        self._broken: str | None = None
        self._startup_failures = 0
        self.metrics = collections.Counter(submitted=0, graded=0, cache_hits=0, timeouts=0,
                                           parse_errors=0, worker_restarts=0, worker_deaths=0)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already means "wake up"
        # Workers are started by the dispatcher thread: PR_SET_PDEATHSIG follows the creating
        # *thread*, and that thread lives exactly as long as this Grader.
        self._workers: list[_Worker] = []
        self._thread = threading.Thread(target=self._run, name="aci-grader", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ public API
    def submit(self, gold, pred: str, *, response: bool = False) -> Future:
        """Non-blocking: a Future resolving to a GradeResult. ``response=True``: pred is a whole response."""
        if not isinstance(pred, str):
            raise TypeError(f"pred must be str, got {type(pred).__name__}")
        gold_s = extract_gold(gold, self.gold_style)
        pred_x = extract_answer(pred, fallback=self.fallback) if response else pred.strip()
        fut: Future = Future()
        if pred_x is None or not pred_x:
            with self._lock:
                self.metrics["submitted"] += 1
                self.metrics["parse_errors"] += 1
            fut.set_result(GradeResult(False, "parse_error", pred_x))
            return fut
        key = (gold_s, pred_x)
        with self._lock:
            if self._closed:
                raise RuntimeError("Grader is closed")
            if self._broken:
                raise RuntimeError(self._broken)
            self.metrics["submitted"] += 1
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.metrics["cache_hits"] += 1
                fut.set_result(GradeResult(hit[0], hit[1], pred_x))
                return fut
            base = self._inflight.get(key)
            if base is None:
                base = Future()
                self._inflight[key] = base
                tid = self._next_id
                self._next_id += 1
                self._tasks[tid] = (key, gold_s, pred_x)
                self._pending.append(tid)
                wake = True
            else:
                self.metrics["cache_hits"] += 1
                wake = False
        if wake:
            self._wake()

        def _copy(b: Future, f=fut, px=pred_x):
            exc = b.exception()
            if exc is not None:
                f.set_exception(exc)
                return
            eq, st = b.result()
            f.set_result(GradeResult(eq, st, px))
        base.add_done_callback(_copy)
        return fut

    def grade(self, gold, pred: str, *, response: bool = False) -> GradeResult:
        return self.submit(gold, pred, response=response).result()

    def grade_batch(self, pairs: Iterable) -> list[GradeResult]:
        """Grade many pairs across the pool; results in input order.

        Each pair is ``(gold, pred)``, ``(gold, pred, response)`` or a dict with keys
        ``gold``, ``pred`` and optional ``response``.
        """
        futs = []
        for p in pairs:
            if isinstance(p, dict):
                futs.append(self.submit(p["gold"], p["pred"], response=bool(p.get("response", False))))
            else:
                futs.append(self.submit(p[0], p[1], response=bool(p[2]) if len(p) > 2 else False))
        return [f.result() for f in futs]

    def stats(self) -> dict:
        with self._lock:
            return dict(self.metrics)

    def close(self) -> None:
        """Stop the dispatcher and all workers; no process is left behind. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join()
        for w in self._workers:
            w.kill()
        self._workers = []
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        # Anything still unresolved gets a verdict so no caller blocks forever.
        with self._lock:
            for key, fut in list(self._inflight.items()):
                if not fut.done():
                    fut.set_result((False, "timeout"))
            self._inflight.clear()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # ------------------------------------------------------------------ dispatcher
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full (the dispatcher will wake anyway) or already closed

    def _finish(self, tid: int, equal: bool, status: str) -> None:
        with self._lock:
            key = self._tasks.pop(tid)[0]
            fut = self._inflight.pop(key, None)
            self.metrics["graded"] += 1
            if status == "timeout":
                self.metrics["timeouts"] += 1
            elif status == "parse_error":
                self.metrics["parse_errors"] += 1
            if self.cache_size > 0:
                self._cache[key] = (equal, status)
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if fut is not None:
            fut.set_result((equal, status))

    def _fail_all(self, why: str) -> None:
        """Workers cannot start: resolve every waiting comparison with an error instead of hanging."""
        with self._lock:
            self._broken = why
            futs = list(self._inflight.values())
            self._inflight.clear()
            self._pending.clear()
            self._tasks.clear()
        for f in futs:
            f.set_exception(RuntimeError(why))

    def _replace(self, idx: int, died: bool) -> None:
        """Kill worker ``idx`` and start its replacement; its current comparison times out and the
        rest of its chunk goes back to the front of the queue."""
        w = self._workers[idx]
        self._sel.unregister(w.proc.stdout)
        w.kill()
        nw = _Worker(self._env)
        self._workers[idx] = nw
        self._sel.register(nw.proc.stdout, selectors.EVENT_READ, nw)
        with self._lock:
            self.metrics["worker_restarts"] += 1
            if died:
                self.metrics["worker_deaths"] += 1
            if len(w.chunk) > 1:
                self._pending.extendleft(reversed(list(w.chunk)[1:]))
        if w.chunk:
            self._finish(w.chunk[0], False, "timeout")

    def _dispatch(self, w: _Worker) -> None:
        with self._lock:
            n = min(self.chunk, max(1, -(-len(self._pending) // self.num_workers)))
            ids = [self._pending.popleft() for _ in range(min(n, len(self._pending)))]
            items = [[tid, self._tasks[tid][1], self._tasks[tid][2], self.engine, self.rel_tol] for tid in ids]
        if not ids:
            return
        w.chunk.extend(ids)
        w.deadline = time.monotonic() + self.timeout
        try:
            w.proc.stdin.write((json.dumps(items) + "\n").encode())
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # noticed as EOF on its stdout

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 — never leave callers waiting on a dead dispatcher
            self._fail_all(f"grader dispatcher failed: {type(e).__name__}: {e}")

    def _loop(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._workers = [_Worker(self._env) for _ in range(self.num_workers)]
        for w in self._workers:
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        while True:
            with self._lock:
                closed = self._closed
            if closed:
                break
            # Hand out work, then sleep until a verdict, a new task, or the nearest deadline.
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.ready and not w.chunk and self._pending:
                    self._dispatch(w)
            deadlines = [w.deadline for w in self._workers if w.chunk]
            deadlines += [w.started + self.startup_timeout for w in self._workers if not w.ready]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            events = sel.select(wait)
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                w = key.data
                try:
                    data = os.read(w.proc.stdout.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # EOF: the worker died
                    if not w.ready:
                        self._startup_failures += 1
                        if self._startup_failures >= 3:
                            self._fail_all("grading workers exit during start-up (see their stderr above)")
                            sel.close()
                            return
                    self._replace(self._workers.index(w), died=True)
                    continue
                w.buf += data
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg == "ready":
                        w.ready = True
                        self._startup_failures = 0
                        continue
                    tid, equal, status, t_done = msg
                    if w.chunk and w.chunk[0] == tid:
                        w.chunk.popleft()
                        self._finish(tid, bool(equal), status)
                        # The worker started its next item at t_done (same system-wide monotonic
                        # clock), so a slow dispatcher cannot stretch that item's limit.
                        w.deadline = min(float(t_done), time.monotonic()) + self.timeout
            now = time.monotonic()
            for idx, w in enumerate(self._workers):
                late = (w.chunk and now >= w.deadline) or (not w.ready and now >= w.started + self.startup_timeout)
                if late:
                    self._replace(idx, died=False)
        sel.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 — interpreter shutdown
            pass


@atexit.register
def _close_all() -> None:
    for g in list(_LIVE):
        g.close()
