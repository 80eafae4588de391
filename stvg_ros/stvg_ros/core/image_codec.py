"""sensor_msgs/Image and CompressedImage <-> RGB numpy frames, without importing ROS.

Functions are duck-typed: they read `encoding`, `height`, `width`, `step`, `data`, `is_bigendian`
(Image) or `format`, `data` (CompressedImage) from any object, so rclpy messages, rosbags messages
and plain namespaces all work. Frames inside stvg_ros are RGB uint8 (H, W, 3); this module is one
of the two edges where other layouts are converted (the other is core/video_io.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB frame (says why)."""


@dataclass(frozen=True)
class _Layout:
    channels: int
    bytes_per_channel: int
    order: str  # rgb, bgr, rgba, bgra, mono, uyvy, yuyv

    @property
    def bytes_per_pixel(self) -> int:
        # YUV 4:2:2 packs two pixels into four bytes: two bytes per pixel on average.
        return 2 if self.order in ("uyvy", "yuyv") else self.channels * self.bytes_per_channel


#: ROS encoding name -> byte layout. `8UC3`/`8UC4` follow OpenCV's BGR(A) convention.
ENCODINGS: dict[str, _Layout] = {
    "rgb8": _Layout(3, 1, "rgb"),
    "bgr8": _Layout(3, 1, "bgr"),
    "rgba8": _Layout(4, 1, "rgba"),
    "bgra8": _Layout(4, 1, "bgra"),
    "mono8": _Layout(1, 1, "mono"),
    "8UC1": _Layout(1, 1, "mono"),
    "8UC3": _Layout(3, 1, "bgr"),
    "8UC4": _Layout(4, 1, "bgra"),
    "mono16": _Layout(1, 2, "mono"),
    "16UC1": _Layout(1, 2, "mono"),
    "rgb16": _Layout(3, 2, "rgb"),
    "bgr16": _Layout(3, 2, "bgr"),
    "yuv422": _Layout(2, 1, "uyvy"),
    "uyvy": _Layout(2, 1, "uyvy"),
    "yuv422_yuy2": _Layout(2, 1, "yuyv"),
    "yuyv": _Layout(2, 1, "yuyv"),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)

_TO_RGB = {
    "rgb": None,
    "bgr": cv2.COLOR_BGR2RGB,
    "rgba": cv2.COLOR_RGBA2RGB,
    "bgra": cv2.COLOR_BGRA2RGB,
    "mono": cv2.COLOR_GRAY2RGB,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}


def _layout(encoding: str) -> _Layout:
    layout = ENCODINGS.get(encoding)
    if layout is None:
        layout = {k.lower(): v for k, v in ENCODINGS.items()}.get(str(encoding).lower())
    if layout is None:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    return layout


def _as_bytes(data) -> np.ndarray:
    """The message's data field as a flat uint8 array (no copy where the buffer allows it)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # bytes, bytearray, memoryview, array.array('B')
    except TypeError as exc:
        raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer") from exc


def decode_image(msg) -> np.ndarray:
    """A sensor_msgs/Image (any object with its fields) as an RGB uint8 (H, W, 3) array.

    16-bit encodings are scaled to 8 bit (value * 255 / 65535). Padded rows (step > width * bytes
    per pixel) are handled. Raises ImageDecodeError on anything it cannot decode.
    """
    encoding = str(getattr(msg, "encoding", ""))
    layout = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has zero size: width={width}, height={height}")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"image step {step} is smaller than width*bytes_per_pixel = {width}*{layout.bytes_per_pixel} = {row_bytes} "
            f"for encoding {encoding!r}"
        )
    if layout.order in ("uyvy", "yuyv") and width % 2:
        raise ImageDecodeError(f"{encoding!r} packs pixel pairs; width {width} must be even")
    data = _as_bytes(msg.data)
    if len(data) < step * height:
        raise ImageDecodeError(
            f"image data has {len(data)} bytes, expected step*height = {step}*{height} = {step * height}"
        )
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    if layout.bytes_per_channel == 2:
        big_endian = bool(getattr(msg, "is_bigendian", False))
        words = np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2")
        # Rounded x * 255 / 65535 without overflow: 65535 -> 255, 0 -> 0.
        pixels = ((words.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        pixels = pixels.reshape(height, width, layout.channels)
    else:
        pixels = np.ascontiguousarray(rows).reshape(height, width, -1)
    code = _TO_RGB[layout.order]
    if code is None:
        return pixels.copy()  # never a view of the message buffer (read-only, or owned by the caller)
    if layout.channels == 1:
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(pixels, code)


def decode_compressed(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG or PNG) as an RGB uint8 (H, W, 3) array."""
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageDecodeError(f"compressed depth images are not supported (format {fmt!r})")
    data = _as_bytes(msg.data)
    if len(data) == 0:
        raise ImageDecodeError(f"compressed image (format {fmt!r}) has no data")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"could not decode compressed image (format {fmt!r}, {len(data)} bytes)")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) frame, got dtype {rgb.dtype} shape {rgb.shape}")
    return rgb


def encode_image(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """Fields of a sensor_msgs/Image (no header) for an RGB frame: height, width, step, encoding,
    data (bytes), is_bigendian. `encoding` is rgb8, bgr8 or mono8."""
    rgb = _check_rgb(rgb)
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ValueError(f"cannot encode to {encoding!r}; use rgb8, bgr8 or mono8")
    height, width = rgb.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return {
        "height": height,
        "width": width,
        "step": width * channels,
        "encoding": encoding,
        "data": np.ascontiguousarray(pixels).tobytes(),
        "is_bigendian": 0,
    }


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> dict:
    """Fields of a sensor_msgs/CompressedImage (no header): format and data (bytes).

    The format string follows image_transport ("rgb8; jpeg compressed bgr8").
    """
    rgb = _check_rgb(rgb)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt in ("jpeg", "jpg"):
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        fmt = "jpeg"
    elif fmt == "png":
        ok, buffer = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"cannot compress to {fmt!r}; use jpeg or png")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {rgb.shape} frame as {fmt}")
    return {"format": f"rgb8; {fmt} compressed bgr8", "data": buffer.tobytes()}
