"""rosbag2 read/write of camera frames with `rosbags` (pure Python; sqlite3 and MCAP storage).

No ROS install is needed. Frames go in and come out as RGB uint8 arrays with their header stamps
(integer nanoseconds). Every failure (missing directory, corrupt or truncated storage, unknown
topic, undecodable image) is raised as BagError with a message that says what is wrong.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from stvg_ros.core.image_codec import ImageDecodeError, decode_compressed, decode_image, encode_compressed

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STORAGES = ("sqlite3", "mcap")


class BagError(RuntimeError):
    """A bag that cannot be read or written as asked (says which bag and why)."""


@dataclass
class CameraFrame:
    """One camera image from a bag: header stamp (ns), frame id and the RGB frame."""

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray
    #: the bag's record time of the message (ns)
    recorded_ns: int = 0


@dataclass
class BagInfo:
    topics: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (msgtype, message count)
    start_ns: int = 0  # record time of the first message (0 for an empty bag)
    end_ns: int = 0  # record time of the last message (0 for an empty bag)
    storage: str = ""  # sqlite3 | mcap

    @property
    def image_topics(self) -> list[str]:
        return sorted(name for name, (msgtype, _) in self.topics.items() if msgtype in IMAGE_TYPES)


@cache
def typestore():
    """The rosbags typestore of the newest ROS 2 distribution this rosbags version knows."""
    from rosbags.typesys import Stores, get_typestore

    ros2 = [store for store in Stores if store.name.startswith("ROS2_")]
    return get_typestore(ros2[-1])


def _split_stamp(stamp_ns: int) -> tuple[int, int]:
    return int(stamp_ns) // 1_000_000_000, int(stamp_ns) % 1_000_000_000


def write_image_bag(
    path: str | Path,
    frames: Iterable[tuple[int, np.ndarray]],
    topic: str = "/camera/image_raw",
    frame_id: str = "camera",
    storage: str = "sqlite3",
    compressed: bool = False,
    overwrite: bool = False,
) -> int:
    """Write (stamp_ns, rgb) frames as sensor_msgs/Image (or CompressedImage, JPEG) to a rosbag2
    directory. The record time of each message is its header stamp. Returns the number written."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = Path(path)
    if storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; use one of {', '.join(STORAGES)}")
    if path.exists():
        if not overwrite:
            raise BagError(f"bag {path} already exists (pass overwrite=True to replace it)")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    store = typestore()
    msgtype = COMPRESSED_TYPE if compressed else IMAGE_TYPE
    types = store.types
    header_cls, time_cls = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    count = 0
    try:
        with Writer(path, version=9, storage_plugin=plugin) as writer:
            connection = writer.add_connection(topic, msgtype, typestore=store)
            for stamp_ns, rgb in frames:
                sec, nanosec = _split_stamp(stamp_ns)
                header = header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=frame_id)
                rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
                if compressed:
                    fields = encode_compressed(rgb)
                    msg = types[COMPRESSED_TYPE](
                        header=header, format=fields["format"], data=np.frombuffer(fields["data"], np.uint8)
                    )
                else:
                    height, width = rgb.shape[:2]
                    msg = types[IMAGE_TYPE](
                        header=header,
                        height=height,
                        width=width,
                        encoding="rgb8",
                        is_bigendian=0,
                        step=width * 3,
                        data=rgb.reshape(-1),
                    )
                writer.write(connection, int(stamp_ns), store.serialize_cdr(msg, msgtype))
                count += 1
    except BagError:
        raise
    except Exception as exc:
        raise BagError(f"cannot write bag {path}: {exc}") from exc
    return count


def _storage_of(path: Path) -> str:
    files = [path] if path.is_file() else list(path.iterdir())
    suffixes = {f.suffix for f in files}
    return "mcap" if ".mcap" in suffixes else "sqlite3" if ".db3" in suffixes else "unknown"


def _open_reader(path: str | Path):
    """An opened rosbags Reader, or BagError naming the problem."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise BagError(f"cannot open bag {path} (corrupt or unsupported): {exc}") from exc
    return reader


def bag_info(path: str | Path) -> BagInfo:
    """Topics with types and counts, first/last record time and the storage of a bag."""
    reader = _open_reader(path)
    try:
        topics = {name: (info.msgtype or "", int(info.msgcount)) for name, info in reader.topics.items()}
        empty = reader.message_count == 0
        return BagInfo(
            topics=topics,
            start_ns=0 if empty else int(reader.start_time),
            end_ns=0 if empty else int(reader.end_time) - 1,  # rosbags' end_time is one past the last message
            storage=_storage_of(Path(path)),
        )
    except Exception as exc:
        raise BagError(f"cannot read bag {path} (corrupt?): {exc}") from exc
    finally:
        reader.close()


def _select_topic(reader, path: Path, topic: str | None):
    topics = {name: info.msgtype for name, info in reader.topics.items()}
    listing = ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(topics.items())) or "none"
    if topic is None:
        images = sorted(name for name, msgtype in topics.items() if msgtype in IMAGE_TYPES)
        if len(images) != 1:
            problem = "no image topic" if not images else "several image topics; pass a topic"
            raise BagError(f"bag {path}: {problem}. Topics: {listing}")
        topic = images[0]
    if topic not in topics:
        raise BagError(f"bag {path} has no topic {topic!r}. Topics: {listing}")
    if topics[topic] not in IMAGE_TYPES:
        raise BagError(f"topic {topic!r} of bag {path} is {topics[topic]}, not an image type")
    return topic, [c for c in reader.connections if c.topic == topic]


def iter_image_messages(path: str | Path, topic: str | None = None) -> Iterator[tuple[int, str, object]]:
    """Yields (record_time_ns, msgtype, message) of an image topic, messages as rosbags objects.

    For forwarding messages as they are (e.g. CompressedImage bytes). `topic` None means the
    bag's only image topic. A truncated bag (fewer messages than its metadata lists) ends with
    BagError after the messages that could be read.
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        topic, connections = _select_topic(reader, path, topic)
        expected = sum(c.msgcount for c in connections)
        store = typestore()
        count = 0
        try:
            for connection, record_ns, raw in reader.messages(connections=connections):
                message = store.deserialize_cdr(raw, connection.msgtype)
                count += 1
                yield int(record_ns), connection.msgtype, message
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"bag {path} is corrupt after {count} messages on {topic}: {exc}") from exc
        if expected and count < expected:
            raise BagError(f"bag {path} is truncated: {count} of {expected} messages on {topic} could be read")
    finally:
        reader.close()


def stamp_ns_of(message) -> int:
    """The header stamp of a message as integer nanoseconds."""
    return int(message.header.stamp.sec) * 1_000_000_000 + int(message.header.stamp.nanosec)


def iter_image_bag(path: str | Path, topic: str | None = None) -> Iterator[CameraFrame]:
    """Yields a CameraFrame (header stamp, frame id, RGB) per image message, in record order.

    Reads sensor_msgs/Image and CompressedImage; `topic` None means the bag's only image topic.
    Memory is bounded: one message at a time.
    """
    for index, (record_ns, msgtype, message) in enumerate(iter_image_messages(path, topic)):
        try:
            rgb = decode_compressed(message) if msgtype == COMPRESSED_TYPE else decode_image(message)
        except ImageDecodeError as exc:
            raise BagError(f"bag {path}: image message {index} cannot be decoded: {exc}") from exc
        yield CameraFrame(
            stamp_ns=stamp_ns_of(message), frame_id=str(message.header.frame_id), rgb=rgb, recorded_ns=record_ns
        )
