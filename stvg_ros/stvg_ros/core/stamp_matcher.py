"""Pairing two stamped streams (camera images and their tracks) without message_filters."""

from __future__ import annotations

import threading
from collections import OrderedDict


class StampMatcher:
    """Pairs items of two streams by stamp; bounded, oldest evicted first. ROS-free, thread-safe."""

    def __init__(self, size: int = 30, max_wait_ns: int = 1_000_000_000) -> None:
        self.size, self.max_wait_ns = max(1, int(size)), int(max_wait_ns)
        self._images: OrderedDict[int, object] = OrderedDict()
        self._tracks: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        self.expired: list[tuple[int, object]] = []  # images that waited too long (drained by the caller)

    def _put(self, own: OrderedDict, other: OrderedDict, stamp_ns: int, item) -> object | None:
        with self._lock:
            if stamp_ns in other:
                return other.pop(stamp_ns)
            own[stamp_ns] = item
            own.move_to_end(stamp_ns)
            while len(own) > self.size:
                evicted = own.popitem(last=False)
                if own is self._images:
                    self.expired.append(evicted)
            if own is self._tracks:  # images older than the newest tracks by max_wait will not be matched
                for stamp in [s for s in self._images if s < stamp_ns - self.max_wait_ns]:
                    self.expired.append((stamp, self._images.pop(stamp)))
            return None

    def add_image(self, stamp_ns: int, image) -> object | None:
        """Returns the tracks of this stamp when they arrived first, else None (the image waits)."""
        return self._put(self._images, self._tracks, stamp_ns, image)

    def add_tracks(self, stamp_ns: int, tracks) -> object | None:
        """Returns the image of this stamp when it arrived first, else None (the tracks wait)."""
        return self._put(self._tracks, self._images, stamp_ns, tracks)

    def drain_expired(self) -> list[tuple[int, object]]:
        with self._lock:
            out, self.expired = self.expired, []
        return out
