"""transformers backend: Qwen2.5-VL from a Hugging Face folder (workstations; bf16 on GPU, fp32 on CPU).

By default the clip goes in as a VIDEO (the released model's representation, METHOD §4): the frames
as one (T, H, W, 3) array with their sampling rate, so Qwen2.5-VL's M-RoPE sees absolute time. With
`use_video=False` it goes in as images with `Frame at t s:` labels, like llama.cpp; `make_backend`
picks that for a model whose training recorded it (`models.recorded_input_format`). Output is
constrained to the answer language by a regex logits processor (`constrained=True`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stvg_ros.core.answer import answer_regex, think_budget_chars
from stvg_ros.core.prompt import clip_user_content
from stvg_ros.grounding.backends.base import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    ModelLoadError,
    SerialLock,
    Stopwatch,
    VlmBackend,
    is_cancelled,
)

log = logging.getLogger(__name__)


def clip_fps(timestamps_s: Sequence[float]) -> float:
    """Frames per second of a clip sampled at `timestamps_s` (mean spacing; 1.0 for one frame)."""
    if len(timestamps_s) < 2:
        return 1.0
    span = float(timestamps_s[-1]) - float(timestamps_s[0])
    return (len(timestamps_s) - 1) / span if span > 0 else 1.0


class TransformersBackend(VlmBackend):
    """Qwen2.5-VL through transformers' AutoModelForImageTextToText."""

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        use_video: bool = True,
        constrained: bool = True,
        attn_implementation: str | None = None,
        model_name: str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.device_request, self.dtype_request = device, dtype
        self.use_video, self.constrained = use_video, constrained
        self.attn_implementation = attn_implementation
        self.model_name = model_name or self.model_path.name
        self.device = "cpu"
        self._model = self._processor = self._table = None
        self._lock = SerialLock()
        self._load_lock = threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            if not (self.model_path / "config.json").is_file():
                raise ModelLoadError(
                    f"model folder not found or not a Hugging Face model (no config.json): {self.model_path} "
                    "(get it with `stvg-ros models pull <name>`)"
                )
            try:
                import torch
                from transformers import AutoModelForImageTextToText, AutoProcessor

                cuda = torch.cuda.is_available()
                self.device = ("cuda" if cuda else "cpu") if self.device_request == "auto" else self.device_request
                if self.dtype_request == "auto":
                    dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
                else:
                    dtype = getattr(torch, self.dtype_request)
                kwargs = {"dtype": dtype, "local_files_only": True}
                if self.attn_implementation:
                    kwargs["attn_implementation"] = self.attn_implementation
                processor = AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
                model = AutoModelForImageTextToText.from_pretrained(self.model_path, **kwargs).to(self.device).eval()
            except Exception as exc:  # any loader failure is a load error with its cause
                raise ModelLoadError(f"transformers could not load {self.model_path}: {type(exc).__name__}: {exc}") from exc
            self._processor, self._model = processor, model
            log.info("transformers loaded %s on %s (%s)", self.model_path, self.device, dtype)

    def close(self) -> None:
        self._model = self._processor = self._table = None

    def _inputs(self, frames, timestamps_s, question):
        pixels = [f.shape[0] * f.shape[1] for f in frames]
        # Frames are already at the model's budget (multiples of 28): keep them as they are.
        size = {"shortest_edge": min(pixels), "longest_edge": max(pixels)}
        if self.use_video:
            content = [{"type": "text", "text": question}, {"type": "video"}]
            prompt = self._processor.apply_chat_template([{"role": "user", "content": content}],
                                                         add_generation_prompt=True, tokenize=False)
            video = np.stack(frames)
            metadata = {"total_num_frames": len(frames), "fps": clip_fps(timestamps_s),
                        "frames_indices": list(range(len(frames)))}
            return self._processor(text=[prompt], videos=[video], video_metadata=[metadata], do_sample_frames=False,
                                   size=size, cap_pixels_per_frame=False, return_tensors="pt")
        content = clip_user_content(question, timestamps_s)
        prompt = self._processor.apply_chat_template([{"role": "user", "content": content}],
                                                     add_generation_prompt=True, tokenize=False)
        return self._processor(text=[prompt], images=list(frames), size=size, return_tensors="pt")

    def _generate_locked(self, r: GenerationRequest) -> GenerationResult:
        """`generate` (VlmBackend's) once the model is loaded and this request holds the lock."""
        try:
            return self._generate(r.frames, r.timestamps_s, r.question, r.reasoning, r.max_new_tokens, r.cancel,
                                  r.on_token, r.track_ids, r.duration_s)  # fmt: skip
        except (GenerationError, ValueError):
            raise
        except Exception as exc:  # surface model failures as generation errors
            raise GenerationError(f"transformers generation failed: {type(exc).__name__}: {exc}") from exc

    def _generate(self, frames, timestamps_s, question, reasoning, max_new_tokens, cancel, on_token, track_ids,
                  duration_s):
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        from stvg_ros.grounding.backends.constrained import RegexLogitsProcessor, TokenTable

        watch = Stopwatch()
        inputs = self._inputs(frames, timestamps_s, question).to(self.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        result = GenerationResult("", prompt_tokens=prompt_length, preprocess_ms=watch.lap())
        tokenizer = self._processor.tokenizer
        eos_ids = self._model.generation_config.eos_token_id
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [tokenizer.eos_token_id])
        processors = LogitsProcessorList()
        if self.constrained:
            if self._table is None:
                self._table = TokenTable(tokenizer)
            pattern = answer_regex(reasoning=reasoning, track_ids=track_ids,
                                   max_think_chars=think_budget_chars(max_new_tokens),
                                   max_seconds=duration_s)
            processors.append(RegexLogitsProcessor(self._table, pattern, prompt_length, eos_ids))
        first_token_at: list[float] = []
        cancelled: list[bool] = []

        class _Watch(StoppingCriteria):
            """Reports each new token and stops on cancel."""

            def __call__(self, input_ids, scores, **kwargs):
                if not first_token_at:
                    first_token_at.append(time.perf_counter())
                if on_token is not None:
                    on_token(tokenizer.decode(input_ids[0, -1:], skip_special_tokens=True))
                stop = is_cancelled(cancel)
                if stop:
                    cancelled.append(True)
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        started = time.perf_counter()
        with torch.inference_mode():
            output = self._model.generate(
                **inputs,
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_Watch()]),
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
            )
        finished = time.perf_counter()
        new_tokens = output[0, prompt_length:]
        result.completion_tokens = int(new_tokens.shape[0])
        result.text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        first = first_token_at[0] if first_token_at else finished
        result.encode_ms = (first - started) * 1000.0
        result.generate_ms = (finished - first) * 1000.0
        if cancelled:
            result.finish_reason = "cancelled"
        elif result.completion_tokens >= int(max_new_tokens) and not (set(new_tokens[-1:].tolist()) & set(eos_ids)):
            result.finish_reason = "length"
        return result
