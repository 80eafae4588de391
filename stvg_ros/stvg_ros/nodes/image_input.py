"""ImageInput: a node's camera subscription that keeps up and says where every lost frame went.

The callback only records the frame and queues it for a FrameWorker (core/frame_queue.py), whose
thread calls the node's handler with every waiting frame, oldest first. Frames can be lost in three
places, each counted on its own (see `counts()`):

- `lost_in_transport`: never reached this process's reader (DDS reported them lost: a sample
  dropped on the wire or too large for the transport);
- `lost_in_reader_queue`: reached the reader but were overwritten in its KEEP_LAST queue (`depth`)
  before the executor ran the callback (the executor was too slow or starved): the publisher's
  sequence numbers have gaps that DDS did not report as transport losses;
- `dropped_backlog`: queued here, then dropped because `backlog` frames were already waiting for
  the handler (the handler was too slow).

Frames the handler could not decode are reported with `count_decode_error()`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks

from stvg_ros.core.frame_queue import FrameWorker
from stvg_ros.nodes.qos import image_subscription

#: Sequence-number gaps larger than this are not counted as losses (a publisher restart, a bag loop).
MAX_COUNTED_GAP = 300
#: Publishers whose last sequence number is remembered (oldest forgotten first).
MAX_PUBLISHERS = 16


@dataclass(frozen=True)
class ReceivedFrame:
    """A camera message and how many frames of its publisher were lost just before it."""

    msg: Any
    lost_before: int


class ImageInput:
    """Subscribe `image` (or `image/compressed`) and feed `handle(frames)` on a worker thread."""

    def __init__(
        self,
        node,
        handle: Callable[[list[ReceivedFrame]], None],
        transport: str = "raw",
        depth: int = 10,
        reliability: str = "best_effort",
        backlog: int = 30,
        callback_group=None,
        topic: str = "",
    ) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self.received = self.sequence_gaps = self.lost_in_transport = self.decode_errors = 0
        self.paused = False
        self._worker: FrameWorker[ReceivedFrame] = FrameWorker(
            handle,
            backlog,
            name=f"{node.get_name()}-frames",
            on_error=lambda exc: node.get_logger().error(f"handling camera frames failed: {exc}"),
        ).start()
        events = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
        self.subscription = image_subscription(
            node, self._on_image, transport, depth, reliability, topic, callback_group=callback_group,
            event_callbacks=events,
        )  # fmt: skip

    @property
    def topic_name(self) -> str:
        return self.subscription.topic_name

    def counts(self) -> dict[str, int]:
        """Frames received and lost, by cause (module docstring); `frames_lost` is their sum."""
        with self._lock:
            transport = self.lost_in_transport
            reader = max(0, self.sequence_gaps - transport)
        counts = {
            "frames_received": self.received,
            "lost_in_transport": transport,
            "lost_in_reader_queue": reader,
            "dropped_backlog": self._worker.dropped,
            "decode_errors": self.decode_errors,
        }
        counts["frames_lost"] = transport + reader + counts["dropped_backlog"] + self.decode_errors
        return counts

    def count_decode_error(self) -> None:
        self.decode_errors += 1

    def pause(self, paused: bool) -> None:
        """Paused: frames are still counted but not queued; waiting frames are forgotten."""
        self.paused = paused
        if paused:
            self._worker.clear()

    def destroy(self) -> None:
        self._node.destroy_subscription(self.subscription)
        self._worker.stop()

    # ---- callbacks (executor thread)

    def _on_image(self, msg, info) -> None:
        # Two parameters: rclpy then passes the MessageInfo (publisher sequence numbers).
        lost = self._sequence_gap(info)
        self.received += 1
        if not self.paused:
            self._worker.submit(ReceivedFrame(msg, lost))

    def _on_message_lost(self, info) -> None:
        with self._lock:
            self.lost_in_transport += int(info.total_count_change)

    def _sequence_gap(self, info) -> int:
        """Frames of this message's publisher missing just before it (0 for the first message)."""
        if not isinstance(info, dict) or not info.get("publication_sequence_number"):
            return 0
        seq, gid = int(info["publication_sequence_number"]), str(info.get("publisher_gid"))
        with self._lock:
            last = self._last_seq.pop(gid, None)
            self._last_seq[gid] = seq
            while len(self._last_seq) > MAX_PUBLISHERS:
                self._last_seq.popitem(last=False)
            if last is None or not last < seq - 1 <= last + MAX_COUNTED_GAP:
                return 0  # first message, in order, a restart or an implausible jump
            self.sequence_gaps += seq - last - 1
        return seq - last - 1
