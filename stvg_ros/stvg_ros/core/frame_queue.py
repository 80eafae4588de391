"""FrameWorker: hands camera frames from a receiving callback to a processing thread, bounded.

A subscription callback must return at once, or the DDS reader's queue overflows while it works;
the work (decoding, detection, buffering) runs on the worker's own thread instead. The worker takes
every waiting frame at once, oldest first, so a handler that fell behind can catch up cheaply (the
tracker predicts the older frames and detects on the newest). The queue holds at most `capacity`
frames; when a new one arrives on a full queue the oldest is dropped and counted (`dropped`), so
memory stays bounded on an endless stream however slow the handler is. ROS-free.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class FrameWorker(Generic[Item]):
    """`submit(item)` from any thread; `handle(items)` runs on the worker thread, oldest first."""

    def __init__(
        self,
        handle: Callable[[list[Item]], None],
        capacity: int,
        name: str = "frames",
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"FrameWorker capacity must be at least 1, got {capacity}")
        self._handle = handle
        self._on_error = on_error or (lambda exc: log.error("%s: handling frames failed: %s", name, exc))
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.capacity = int(capacity)
        self.name = name
        self.dropped = 0  # frames dropped because the queue was full (the handler fell behind)
        self.handled = 0  # frames handed to `handle`
        self.errors = 0  # calls of `handle` that raised
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> FrameWorker[Item]:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def submit(self, item: Item) -> bool:
        """Queue `item`; False when the oldest waiting item had to be dropped to make room."""
        with self._cond:
            full = len(self._queue) >= self.capacity
            if full:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._cond.notify()
        return not full

    def clear(self) -> int:
        """Forget the waiting items (not counted as dropped); returns how many there were."""
        with self._cond:
            count = len(self._queue)
            self._queue.clear()
        return count

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the call in progress; waiting items are discarded."""
        self._stop.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        self._thread = None

    def _take(self, timeout_s: float) -> list[Item]:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stop.is_set(), timeout=timeout_s)
            items = list(self._queue)
            self._queue.clear()
        return items

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take(timeout_s=1.0)
            if not items or self._stop.is_set():
                continue
            self.handled += len(items)
            try:
                self._handle(items)
            except Exception as exc:  # never let one batch end the thread
                self.errors += 1
                self._on_error(exc)
