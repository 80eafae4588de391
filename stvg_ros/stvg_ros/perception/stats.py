"""Bounded rate and latency meters for diagnostics and benchmarks."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over the last `window_s` seconds (monotonic clock), bounded memory."""

    def __init__(self, window_s: float = 5.0, max_events: int = 10_000) -> None:
        self.window_s = float(window_s)
        self._times: deque[float] = deque(maxlen=max_events)
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)
        self.total += 1

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        return len(self._times) / self.window_s


class LatencyMeter:
    """Percentiles of the last `size` latencies (seconds in, milliseconds out)."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(float(seconds))

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self._values, q) * 1e3) if self._values else 0.0

    def __len__(self) -> int:
        return len(self._values)
