"""core/bag_io.py: rosbag2 (sqlite3 and MCAP) round trips and BagError on every bad bag."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.core.bag_io import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    BagError,
    bag_info,
    iter_image_bag,
    iter_image_messages,
    typestore,
    write_image_bag,
)

T0 = 1_700_000_000 * 10**9
STEP = 100_000_000  # 10 fps


def _frames(n=6, height=24, width=32):
    rng = np.random.default_rng(1)
    return [(T0 + i * STEP + 7, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_raw_round_trip_is_exact(tmp_path, storage):
    frames = _frames()
    bag = tmp_path / "bag"
    assert write_image_bag(bag, iter(frames), storage=storage) == len(frames)
    info = bag_info(bag)
    assert info.topics == {"/camera/image_raw": (IMAGE_TYPE, 6)}
    assert info.storage == storage and info.image_topics == ["/camera/image_raw"]
    assert (info.start_ns, info.end_ns) == (frames[0][0], frames[-1][0])
    read = list(iter_image_bag(bag))
    assert len(read) == len(frames)
    for frame, (stamp, rgb) in zip(read, frames, strict=True):
        assert frame.stamp_ns == stamp and frame.recorded_ns == stamp and frame.frame_id == "camera"
        np.testing.assert_array_equal(frame.rgb, rgb)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_compressed_round_trip(tmp_path, storage):
    smooth = [(s, np.full((24, 32, 3), (30 * i, 100, 200), np.uint8)) for i, (s, _) in enumerate(_frames())]
    bag = tmp_path / "bag"
    write_image_bag(bag, smooth, topic="/cam/image/compressed", frame_id="optical", storage=storage, compressed=True)
    assert bag_info(bag).topics == {"/cam/image/compressed": (COMPRESSED_TYPE, 6)}
    read = list(iter_image_bag(bag, topic="/cam/image/compressed"))
    assert [f.stamp_ns for f in read] == [s for s, _ in smooth]
    assert {f.frame_id for f in read} == {"optical"}
    for frame, (_, rgb) in zip(read, smooth, strict=True):
        assert np.abs(frame.rgb.astype(int) - rgb).max() <= 6
    raw = list(iter_image_messages(bag))
    assert raw[0][1] == COMPRESSED_TYPE and "jpeg" in raw[0][2].format


def test_reading_stops_early_without_leaking(tmp_path):
    bag = tmp_path / "bag"
    write_image_bag(bag, _frames())
    frames = iter_image_bag(bag)
    first = next(frames)
    frames.close()
    assert first.stamp_ns == T0 + 7
    assert len(list(iter_image_bag(bag))) == 6  # the bag can be opened again


def _two_topic_bag(path):
    from rosbags.rosbag2 import Writer

    store = typestore()
    with Writer(path, version=9) as writer:
        for topic in ("/left/image_raw", "/right/image_raw"):
            connection = writer.add_connection(topic, IMAGE_TYPE, typestore=store)
            header = store.types["std_msgs/msg/Header"](
                stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=topic
            )
            message = store.types[IMAGE_TYPE](
                header=header, height=1, width=1, encoding="rgb8", is_bigendian=0, step=3,
                data=np.zeros(3, np.uint8),
            )  # fmt: skip
            writer.write(connection, 1_000_000_000, store.serialize_cdr(message, IMAGE_TYPE))
        status = writer.add_connection("/status", "std_msgs/msg/String", typestore=store)
        text = store.types["std_msgs/msg/String"](data="ok")
        writer.write(status, 1_000_000_000, store.serialize_cdr(text, "std_msgs/msg/String"))


def test_topic_selection_errors_list_the_topics(tmp_path):
    bag = tmp_path / "two"
    _two_topic_bag(bag)
    with pytest.raises(BagError, match=r"several image topics.*/left/image_raw.*/right/image_raw"):
        list(iter_image_bag(bag))
    with pytest.raises(BagError, match=r"no topic '/front/image_raw'.*Topics: /left/image_raw"):
        list(iter_image_bag(bag, topic="/front/image_raw"))
    with pytest.raises(BagError, match="std_msgs/msg/String, not an image type"):
        list(iter_image_bag(bag, topic="/status"))
    assert [f.frame_id for f in iter_image_bag(bag, topic="/right/image_raw")] == ["/right/image_raw"]
    only_status = tmp_path / "status"
    from rosbags.rosbag2 import Writer

    with Writer(only_status, version=9) as writer:
        writer.add_connection("/status", "std_msgs/msg/String", typestore=typestore())
    with pytest.raises(BagError, match="no image topic"):
        list(iter_image_bag(only_status))


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        bag_info(tmp_path / "missing")
    with pytest.raises(BagError, match="bag not found"):
        list(iter_image_bag(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(BagError, match=r"no metadata\.yaml"):
        list(iter_image_bag(tmp_path / "plain"))


def _storage_file(bag):
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "metadata"])
def test_damaged_bags_raise_bag_error(tmp_path, storage, damage):
    bag = tmp_path / "bag"
    write_image_bag(bag, _frames(20, 48, 64), storage=storage)
    data_file = _storage_file(bag)
    if damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    elif damage == "garbage":
        data_file.write_bytes(np.random.default_rng(2).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif damage == "delete":
        data_file.unlink()
    else:
        (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed")
    with pytest.raises(BagError, match=str(bag.name)):
        info = bag_info(bag)
        frames = list(iter_image_bag(bag))
        # Whatever could be read must never be silently short.
        assert len(frames) == info.topics["/camera/image_raw"][1]


def test_write_errors(tmp_path):
    bag = tmp_path / "bag"
    write_image_bag(bag, _frames(2))
    with pytest.raises(BagError, match="already exists"):
        write_image_bag(bag, _frames(2))
    assert write_image_bag(bag, _frames(3), overwrite=True) == 3
    assert len(list(iter_image_bag(bag))) == 3
    with pytest.raises(BagError, match="unknown bag storage 'rosbag1'"):
        write_image_bag(tmp_path / "x", _frames(1), storage="rosbag1")
