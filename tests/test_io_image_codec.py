"""core/image_codec.py: every supported encoding, padded rows, data containers, bad input."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stvg_ros.core.image_codec import (
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)

H, W = 5, 6
RGB = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
GRAY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)


def msg(encoding: str, pixels: np.ndarray, pad: int = 0, big_endian: bool = False, data_type=bytes):
    """An Image-like message whose rows are `pixels` rows as bytes, plus `pad` garbage bytes per row."""
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 77, np.uint8)], axis=1)
    raw = rows.tobytes()
    data = {bytes: raw, bytearray: bytearray(raw), list: list(raw), np.ndarray: np.frombuffer(raw, np.uint8)}.get(
        data_type, array.array("B", raw) if data_type is array.array else raw
    )
    return SimpleNamespace(
        encoding=encoding, height=pixels.shape[0], width=pixels.shape[1], step=rows.shape[1], data=data,
        is_bigendian=int(big_endian),
    )  # fmt: skip


def as16(a: np.ndarray, big_endian: bool = False) -> np.ndarray:
    """8-bit values scaled to the full 16-bit range (v * 257), in the given byte order."""
    return (a.astype(np.uint16) * 257).astype(">u2" if big_endian else "<u2")


GRAY_RGB = np.repeat(GRAY[:, :, None], 3, axis=2)
ALPHA = np.full((H, W, 1), 200, np.uint8)

CASES = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], 2), RGB),
    "bgra8": (np.concatenate([RGB[:, :, ::-1], ALPHA], 2), RGB),
    "mono8": (GRAY, GRAY_RGB),
    "8UC1": (GRAY, GRAY_RGB),
    "8UC3": (RGB[:, :, ::-1], RGB),
    "8UC4": (np.concatenate([RGB[:, :, ::-1], ALPHA], 2), RGB),
    "mono16": (as16(GRAY), GRAY_RGB),
    "16UC1": (as16(GRAY), GRAY_RGB),
    "rgb16": (as16(RGB), RGB),
    "bgr16": (as16(RGB[:, :, ::-1]), RGB),
}


@pytest.mark.parametrize("encoding", sorted(CASES))
@pytest.mark.parametrize("pad", [0, 3])
def test_decode_exact_encodings(encoding, pad):
    pixels, expected = CASES[encoding]
    out = decode_image(msg(encoding, pixels, pad=pad))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_byte_order_and_scaling():
    np.testing.assert_array_equal(decode_image(msg("mono16", as16(GRAY, True), big_endian=True))[:, :, 0], GRAY)
    values = np.array([[0, 1000, 65535, 32768, 300]])
    expected = [0, 4, 255, 128, 1]  # round(v * 255 / 65535)
    for big_endian in (False, True):
        words = values.astype(">u2" if big_endian else "<u2")
        out = decode_image(msg("16UC1", words, big_endian=big_endian))
        np.testing.assert_array_equal(out[0, :, 0], expected)
    # The flag matters: 300 (0x012C) read in the wrong byte order is 0x2C01 = 11265 -> 44.
    wrong = decode_image(msg("16UC1", values.astype("<u2"), big_endian=True))
    assert wrong[0, 4, 0] == 44


def _yuv422(y: np.ndarray, u: int, v: int, order: str) -> np.ndarray:
    """Packed 4:2:2 bytes (H, W*2) for luma `y` (H, W) and one chroma pair for all pixels."""
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y0, v, y1
    else:
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y0, u, y1, v
    return out.reshape(h, w * 2)


@pytest.mark.parametrize(
    ("encoding", "order"), [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")]
)
def test_decode_yuv422_byte_orders(encoding, order):
    luma = np.tile(np.array([[40, 200, 90, 160]], np.uint8), (3, 1))
    packed = _yuv422(luma, 128, 128, order)
    image = SimpleNamespace(encoding=encoding, height=3, width=4, step=8, data=packed.tobytes(), is_bigendian=0)
    out = decode_image(image).astype(int)
    assert out.shape == (3, 4, 3)
    # Neutral chroma: grey pixels whose brightness follows the luma of each pixel, in order.
    assert np.all(np.abs(out - out[:, :, :1]) <= 2)
    assert out[0, 0, 0] < out[0, 2, 0] < out[0, 3, 0] < out[0, 1, 0]
    # Strong red chroma (V high, U low) gives a red pixel.
    red = decode_image(SimpleNamespace(encoding=encoding, height=3, width=4, step=8,
                                       data=_yuv422(np.full((3, 4), 90, np.uint8), 90, 240, order).tobytes()))  # fmt: skip
    r, g, b = red[0, 0].astype(int)
    assert r > 180 and g < 60 and b < 60


@pytest.mark.parametrize("data_type", [bytes, bytearray, list, np.ndarray, array.array])
def test_data_containers(data_type):
    np.testing.assert_array_equal(decode_image(msg("rgb8", RGB, data_type=data_type)), RGB)


def test_decoded_frame_is_writable_copy():
    data = np.frombuffer(RGB.tobytes(), np.uint8).copy()
    image = SimpleNamespace(encoding="rgb8", height=H, width=W, step=W * 3, data=data, is_bigendian=0)
    out = decode_image(image)
    out[:] = 0
    assert data.any(), "decoding must not alias the message buffer"


def test_every_listed_encoding_decodes():
    for encoding in SUPPORTED_ENCODINGS:
        channels = {"mono8": 1, "8UC1": 1, "mono16": 2, "16UC1": 2, "rgb16": 6, "bgr16": 6, "rgba8": 4,
                    "bgra8": 4, "8UC4": 4}.get(encoding, 2 if "yu" in encoding or encoding == "uyvy" else 3)  # fmt: skip
        image = SimpleNamespace(encoding=encoding, height=2, width=4, step=4 * channels, data=bytes(8 * channels))
        assert decode_image(image).shape == (2, 4, 3), encoding


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"encoding": "bayer_rggb8"}, "unsupported image encoding 'bayer_rggb8'"),
        ({"encoding": ""}, "supported: rgb8"),
        ({"width": 0}, "zero size"),
        ({"height": 0}, "zero size"),
        ({"step": W * 3 - 1}, "step 17 is smaller than width*bytes_per_pixel"),
        ({"data": bytes(H * W * 3 - 1)}, "expected step*height"),
        ({"data": b""}, "has 0 bytes"),
        ({"data": 12345}, "not a byte buffer"),
    ],
)
def test_bad_images_raise_clear_errors(fields, needle):
    image = SimpleNamespace(encoding="rgb8", height=H, width=W, step=W * 3, data=RGB.tobytes(), is_bigendian=0)
    for key, value in fields.items():
        setattr(image, key, value)
    with pytest.raises(ImageDecodeError, match=needle.replace("*", r"\*").replace("(", r"\(")):
        decode_image(image)


def test_odd_width_yuv_is_an_error():
    image = SimpleNamespace(encoding="yuv422", height=2, width=3, step=6, data=bytes(12))
    with pytest.raises(ImageDecodeError, match="must be even"):
        decode_image(image)


def test_image_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_encode_image_round_trip(encoding):
    fields = encode_image(RGB, encoding)
    assert fields["encoding"] == encoding and fields["height"] == H and fields["width"] == W
    assert fields["is_bigendian"] == 0 and len(fields["data"]) == fields["step"] * H
    out = decode_image(SimpleNamespace(**fields))
    np.testing.assert_array_equal(out, GRAY_RGB if encoding == "mono8" else RGB)


def test_encode_image_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot encode"):
        encode_image(RGB, "yuv422")
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_image(RGB.astype(np.float32))
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_image(GRAY)


def test_compressed_round_trip():
    smooth = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_LINEAR)
    png = encode_compressed(smooth, "png")
    assert png["format"] == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(decode_compressed(SimpleNamespace(**png)), smooth)
    jpeg = encode_compressed(smooth, "jpeg", quality=95)
    assert "jpeg" in jpeg["format"] and jpeg["data"][:2] == b"\xff\xd8"
    assert np.abs(decode_compressed(SimpleNamespace(**jpeg)).astype(int) - smooth).mean() < 4
    gray_png = cv2.imencode(".png", GRAY)[1].tobytes()
    np.testing.assert_array_equal(decode_compressed(SimpleNamespace(format="png", data=gray_png)), GRAY_RGB)
    with pytest.raises(ValueError, match="cannot compress"):
        encode_compressed(smooth, "webp2")


@pytest.mark.parametrize(
    ("fmt", "data", "needle"),
    [
        ("jpeg", b"not an image at all", "could not decode"),
        ("jpeg", b"", "no data"),
        ("16UC1; compressedDepth png", b"\x00" * 20, "compressed depth"),
    ],
)
def test_bad_compressed_images(fmt, data, needle):
    with pytest.raises(ImageDecodeError, match=needle):
        decode_compressed(SimpleNamespace(format=fmt, data=data))
