"""Micro-batching: the rows of concurrent requests run through the model together.

Handler threads encode their own request (:meth:`Scorer.encode`) and :meth:`MicroBatcher.submit`
the encoded rows; one model thread takes the first waiting request, gathers more for up to
``max_wait_ms`` or until ``max_batch`` rows, runs the model once and hands each request its slice.
Only requests encoded by the same :class:`~serving.scorer.Scorer` are merged, so a hot swap never
mixes two versions' vocabularies in one batch. ``max_wait_ms = 0`` merges only what is already
queued (no added latency for a lone client).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from ctr.errors import CtrError, InvalidRequestError
from ctr.features.tensorize import EncodedColumns
from serving.scorer import Scorer

log = logging.getLogger("ctr.serving")


class DeadlineExceeded(CtrError):
    """The request's deadline passed while it waited for the model."""

    grpc_status = "DEADLINE_EXCEEDED"


class _Item:
    __slots__ = ("scorer", "cols", "n", "done", "result", "error")

    def __init__(self, scorer: Scorer, cols: EncodedColumns) -> None:
        self.scorer, self.cols, self.n = scorer, cols, len(cols)
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class MicroBatcher:
    """One model thread serving many handler threads.

    Args:
        max_batch (int): most rows per model call (a larger single request runs alone).
        max_wait_ms (float): how long the first request of a batch waits for company.
        on_batch (callable | None): called with each model call's row count (metrics).
    """

    def __init__(self, max_batch: int = 512, max_wait_ms: float = 0.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.on_batch = on_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._carry: _Item | None = None
        self._thread = threading.Thread(target=self._loop, name="ctr-model", daemon=True)
        self._started = False

    def start(self) -> "MicroBatcher":
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def submit(self, scorer: Scorer, cols: EncodedColumns, timeout: float | None = None) -> np.ndarray:
        """Probabilities for ``cols`` (blocking); raises :class:`DeadlineExceeded` after ``timeout`` s."""
        item = _Item(scorer, cols)
        self._queue.put(item)
        if not item.done.wait(timeout):
            raise DeadlineExceeded("deadline exceeded while waiting for the model; retry with a longer deadline")
        if item.error is not None:
            raise item.error
        return item.result

    def stop(self) -> None:
        """Finish the queued requests, then end the model thread."""
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._started = False

    def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            group, rows = [first], first.n
            deadline = time.perf_counter() + self.max_wait
            stop = False
            while rows < self.max_batch:
                try:
                    nxt = self._next(max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if nxt.scorer is not first.scorer or rows + nxt.n > self.max_batch:
                    self._carry = nxt
                    break
                group.append(nxt)
                rows += nxt.n
            self._run(group, rows)
            if stop:
                return

    def _run(self, group: list[_Item], rows: int) -> None:
        try:
            cols = EncodedColumns.concat([i.cols for i in group])
            probs = group[0].scorer.predict(cols)
            start = 0
            for item in group:
                item.result = probs[start:start + item.n]
                start += item.n
                if not np.isfinite(item.result).all():  # e.g. 1e308 in a numeric field without a transform
                    bad = int(np.flatnonzero(~np.isfinite(item.result))[0])
                    item.error = InvalidRequestError(f"example {bad}: the score is not finite; a numeric feature "
                                                     "value is out of the range this model can take",
                                                     example=bad)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            log.exception("model call failed for a batch of %d rows", rows)
            for item in group:
                item.error = exc
        finally:
            for item in group:
                item.done.set()
        if self.on_batch is not None:
            self.on_batch(rows)
