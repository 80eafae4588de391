"""Export a YOLO checkpoint to ONNX (fp32) and a static-int8 ONNX calibrated on real frames.

`stvg-train export` and the model builds (synthetic_detector, COCO manifests, the random-weight
`yolo11n-random` of `build_random_yolo`) call `export_detector_onnx`. Static QDQ quantization
(per-channel int8 weights, uint8 activations) is about twice as fast as fp32 on a small CPU;
dynamic quantization is slower there (ConvInteger), so it is not offered.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stvg_ros.perception.detector import letterbox, to_input_tensor

log = logging.getLogger(__name__)


def synthetic_calibration_frames(n: int = 16, seed: int = 7) -> list[np.ndarray]:
    """Frames from core/synth scenes (used when the caller has no frames of its own)."""
    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

    frames = []
    for i in range(n):
        spec = SceneSpec(seconds=4.0, fps=5.0, width=640 if i % 2 else 320, height=480 if i % 2 else 240)
        scene = generate_scene(seed + i, spec)
        frames.append(scene.render_frame((i * 3) % scene.num_frames))
    return frames


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over letterboxed frames."""

    def __init__(self, input_name: str, frames: list[np.ndarray], imgsz: int) -> None:
        self._items = iter([{input_name: to_input_tensor(letterbox(f, imgsz)[0])} for f in frames])

    def get_next(self):
        return next(self._items, None)


def head_postprocess_nodes(model) -> list[str]:
    """Nodes of the YOLO head that turn features into boxes and scores (DFL, sigmoid, concat).

    They stay fp32: the output tensor mixes pixel coordinates (0..imgsz) and scores (0..1), and
    one uint8 scale for both would round every score to 0 or 1.
    """
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    parts = producer.name.split("/")
    head = "/".join(parts[:2]) + "/" if len(parts) > 2 else ""
    branches = ("/cv2", "/cv3", "/one2one_cv2", "/one2one_cv3")
    return [
        n.name
        for n in model.graph.node
        if head and n.name.startswith(head) and not any(n.name.startswith(head.rstrip("/") + b) for b in branches)
    ]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_frames: list[np.ndarray]) -> Path:
    """Static QDQ int8 (per-channel QInt8 weights, QUInt8 activations) calibrated on `calibration_frames`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_frames:
        raise ValueError("static int8 quantization needs at least one calibration frame")
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    imgsz = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing only helps; quantize the plain model without it
            log.warning("quant_pre_process failed (%s); quantizing without it", exc)
            shutil.copy(fp32_path, prepared)
        quantize_static(
            str(prepared),
            str(int8_path),
            _CalibrationReader(input_name, calibration_frames, imgsz),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=head_postprocess_nodes(onnx.load(str(prepared))),
        )
    # Keep the class names and the rest of ultralytics' metadata on the int8 file too.
    quantized = onnx.load(str(int8_path))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    onnx.save(quantized, str(int8_path))
    return int8_path


def export_detector_onnx(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    calibration_frames: Iterable[np.ndarray] | None = None,
    int8: bool = True,
    imgsz: int | None = None,
    stem: str | None = None,
) -> dict[str, Path]:
    """Export `model_path` (an ultralytics .pt) to `<out_dir>/<stem>.onnx` and, with `int8`,
    `<out_dir>/<stem>-int8.onnx`. Returns {"onnx": path, "onnx-int8": path}.

    `calibration_frames` are RGB uint8 frames like the ones the detector will see (default: frames
    of synthetic scenes); `imgsz` defaults to the size the checkpoint was trained at.
    """
    from ultralytics import YOLO

    model_path, out_dir = Path(model_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or model_path.stem
    model = YOLO(str(model_path), task="detect")
    imgsz = int(imgsz or (getattr(model, "overrides", {}) or {}).get("imgsz") or 640)
    with tempfile.TemporaryDirectory() as tmp:
        # ultralytics writes the .onnx next to its input: export from a copy in a scratch folder
        scratch = Path(tmp) / model_path.name
        shutil.copy(model_path, scratch)
        exported = YOLO(str(scratch), task="detect").export(
            format="onnx", imgsz=imgsz, dynamic=False, simplify=True, nms=False, device="cpu", verbose=False
        )
        fp32 = out_dir / f"{stem}.onnx"
        shutil.move(str(exported), fp32)
    paths = {"onnx": fp32}
    if int8:
        frames = list(calibration_frames) if calibration_frames is not None else synthetic_calibration_frames()
        paths["onnx-int8"] = quantize_int8(fp32, out_dir / f"{stem}-int8.onnx", frames)
    log.info("exported %s -> %s", model_path, ", ".join(str(p) for p in paths.values()))
    return paths


def calibration_frames_from_env(n: int = 32) -> list[np.ndarray] | None:
    """Frames from the images in $STVG_CALIBRATION_DIR (jpg/png), or None when it is not set."""
    import cv2

    folder = os.environ.get("STVG_CALIBRATION_DIR")
    if not folder:
        return None
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    frames = [cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for p in paths if (image := cv2.imread(str(p))) is not None]
    if not frames:
        raise ValueError(f"STVG_CALIBRATION_DIR={folder} has no readable jpg/png images")
    return frames


def build_from_manifest(out_dir: Path, manifest) -> dict[str, Path]:
    """Model-registry build hook for hosted checkpoints: fetch the `pt` file, export ONNX fp32 + int8.

    The output names come from the manifest's `onnx` and `onnx-int8` files; the input size from its
    `imgsz` (default 640).
    """
    from stvg_ros.core import model_registry

    checkpoint = model_registry.resolve(manifest.name, "pt", download=True)
    return _export_manifest_onnx(checkpoint, out_dir, manifest, calibration_frames_from_env())


def _export_manifest_onnx(
    checkpoint: Path, out_dir: Path, manifest, frames: list[np.ndarray] | None
) -> dict[str, Path]:
    """ONNX fp32 + int8 of `checkpoint`, named after the manifest's `onnx` / `onnx-int8` files."""
    stem = Path(manifest.file("onnx").name).stem
    expected_int8 = manifest.file("onnx-int8").name
    imgsz = int(manifest.extra.get("imgsz", 640))
    paths = export_detector_onnx(checkpoint, out_dir, frames, True, imgsz, stem)
    if paths["onnx-int8"].name != expected_int8:
        paths["onnx-int8"] = paths["onnx-int8"].replace(Path(out_dir) / expected_int8)
    return paths


#: Class-logit bias of `random_yolo`, chosen for a trained model's load in a scene: boxes per
#: 640x480 frame of core/synth scenes 3-5 (30 frames) after the pipeline's conf 0.1 and class-aware
#: NMS at IoU 0.5, median (10th-90th percentile): -10: 10 (1-21), -9.5: 15 (2-28), -9: 22 (6-36),
#: -8: 44 (13-67), -7: 80 (34-111). Ultralytics' initial bias (-8.8 to -11.5 by stride, on the
#: untouched random features) gives none.
RANDOM_YOLO_CLASS_BIAS = -9.5


def coco_class_names() -> dict[int, str]:
    """The 80 COCO class names as ultralytics ships them (cfg/datasets/coco.yaml; no download)."""
    import yaml
    from ultralytics.utils import ROOT

    return dict(yaml.safe_load((ROOT / "cfg" / "datasets" / "coco.yaml").read_text())["names"])


def random_yolo(
    arch: str = "yolo11n.yaml",
    seed: int = 0,
    class_bias: float = RANDOM_YOLO_CLASS_BIAS,
    imgsz: int = 640,
    frames: list[np.ndarray] | None = None,
):
    """An ultralytics YOLO of architecture `arch` (80 COCO classes) with random weights whose cost
    and output are like a trained model's on a camera frame: a cost stand-in, its boxes mean nothing.

    Two changes to the random init, both deterministic for `seed` (and `frames`):
    - BatchNorm statistics are set from a batch of synthetic frames (a data-dependent init). With
      ultralytics' init the signal fades through the ~100 layers (class logits vary by ~1e-8 over
      a frame), so a bias alone gives either no box or every anchor; normalised, the logits follow
      the image content (std ~0.6, a heavy upper tail).
    - Every class-logit bias is `class_bias` (see RANDOM_YOLO_CLASS_BIAS), so a few anchors pass
      the detector's threshold, as with a trained model in a scene with objects.
    """
    import torch
    from ultralytics import YOLO

    frames = frames if frames is not None else synthetic_calibration_frames(8, seed=1000 + seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = YOLO(arch, task="detect", verbose=False)
    net = model.model
    if getattr(net.model[-1], "nc", None) == 80:
        net.names = coco_class_names()
    batch = torch.from_numpy(np.concatenate([to_input_tensor(letterbox(f, imgsz)[0]) for f in frames]))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # running stats = this batch's statistics
    net.train()
    with torch.no_grad():
        net(batch)
    net.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    for branch in net.model[-1].cv3:
        branch[-1].bias.data.fill_(class_bias)
    return model


def build_random_yolo(out_dir: Path, manifest) -> dict[str, Path]:
    """Model-registry build hook for random-weight detectors (`yolo11n-random`): `random_yolo` with
    the manifest's `random_init` settings (arch, seed, class_bias), saved as its `pt` file and
    exported to ONNX fp32 + static int8 (calibrated on synthetic frames). Needs no network."""
    settings = dict(manifest.extra.get("random_init") or {})
    imgsz = int(manifest.extra.get("imgsz", 640))
    model = random_yolo(
        str(settings.get("arch", "yolo11n.yaml")),
        int(settings.get("seed", 0)),
        float(settings.get("class_bias", RANDOM_YOLO_CLASS_BIAS)),
        imgsz,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / manifest.file("pt").name
    model.save(pt)
    paths = _export_manifest_onnx(pt, out_dir, manifest, synthetic_calibration_frames())
    return {"pt": pt, **paths}
