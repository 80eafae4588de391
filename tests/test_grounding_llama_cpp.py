"""llama.cpp backend on the tiny Qwen2.5-VL converted with llama.cpp's own converter (tests/fixtures/vlm.py)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding import gguf
from stvg_ros.grounding.backends import ModelLoadError, make_backend, resolve_model_files
from stvg_ros.grounding.backends.llama_cpp import LlamaCppBackend

QUESTION = build_question("the green box that moves to the right")


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (252, 336, 3), dtype=np.uint8) for _ in range(4)]
    return frames, [0.0, 1.0, 2.0, 3.0]


@pytest.fixture(scope="module")
def llama(tiny_vlm):
    backend = LlamaCppBackend(tiny_vlm.gguf_f32, tiny_vlm.mmproj_f32, n_ctx=4096, n_threads=1)
    backend.load()
    yield backend
    backend.close()


def test_conversion_made_a_qwen2vl_model_and_its_projector(tiny_vlm):
    model, mmproj = gguf.gguf_summary(tiny_vlm.gguf_f32), gguf.gguf_summary(tiny_vlm.mmproj_f32)
    assert model["architecture"] == "qwen2vl" and model["embedding_length"] == 64 and model["file_type"] == 0
    # the rotary base and M-RoPE sections travel from the Hugging Face config (the small model sets its own)
    rope = json.loads((tiny_vlm.hf_dir / "config.json").read_text())["text_config"]["rope_parameters"]
    assert model["rope_freq_base"] == pytest.approx(rope["rope_theta"])
    assert list(model["rope_dimension_sections"]) == [*rope["mrope_section"], 0]
    assert mmproj["architecture"] == "clip" and mmproj["projector_type"] == "qwen2.5vl_merger"
    assert mmproj["projection_dim"] == 64
    assert gguf.gguf_summary(tiny_vlm.gguf_q8_0)["file_type"] == gguf.QUANTS["q8_0"]


@pytest.mark.parametrize("reasoning", [True, False])
def test_the_grammar_makes_the_random_model_answer_parse(llama, clip, reasoning):
    frames, times = clip
    tokens = []
    result = llama.generate(frames, times, QUESTION, reasoning=reasoning, max_new_tokens=160, track_ids=[2, 5],
                            duration_s=3.0, on_token=tokens.append)
    parsed = parse_answer(result.text, strict=False, duration=3.0, track_ids=[2, 5])
    assert parsed.ok, result.text
    assert result.text.startswith("<think>") == reasoning and result.text.endswith("</answer>")
    assert parsed.well_formatted == reasoning
    assert "".join(tokens) == result.text and result.finish_reason == "stop"
    assert result.prompt_tokens > 4 * (252 // 28) * (336 // 28) and result.completion_tokens > 0
    assert result.encode_ms > 0 and result.preprocess_ms > 0


def test_quantized_model_loads_and_answers(tiny_vlm, clip):
    backend = make_backend("llama_cpp", model=str(tiny_vlm.gguf_q8_0), mmproj=str(tiny_vlm.mmproj_f32), n_threads=1,
                           n_ctx=2048)
    try:
        result = backend.generate(*clip, QUESTION, reasoning=False, max_new_tokens=64, track_ids=[7],
                                  duration_s=3.0)
        assert parse_answer(result.text, strict=True, duration=3.0, track_ids=[7]).ok, result.text
    finally:
        backend.close()


def test_unconstrained_random_model_output_is_garbage(tiny_vlm, clip):
    backend = LlamaCppBackend(tiny_vlm.gguf_f32, tiny_vlm.mmproj_f32, n_ctx=2048, n_threads=1, constrained=False)
    try:
        result = backend.generate(*clip, QUESTION, max_new_tokens=24)
        assert not parse_answer(result.text, strict=False).ok  # what the grammar is there for
        assert result.finish_reason in ("length", "stop")
    finally:
        backend.close()


def test_cancel_stops_generation_between_tokens(llama, clip):
    cancel = threading.Event()
    seen = []

    def on_token(piece):
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    result = llama.generate(*clip, QUESTION, reasoning=True, max_new_tokens=300, cancel=cancel, on_token=on_token)
    assert result.finish_reason == "cancelled" and len(seen) == 3


def test_mmproj_of_another_model_is_refused_at_load(tiny_vlm):
    with pytest.raises(ModelLoadError, match="does not match") as info:
        make_backend("llama_cpp", model=str(tiny_vlm.gguf_f32), mmproj=str(tiny_vlm.mmproj_other_model))
    assert "96-d" in str(info.value) and "64-d" in str(info.value)


def test_wrong_files_are_refused_with_clear_messages(tiny_vlm, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model file not found: .*missing\.gguf"):
        make_backend("llama_cpp", model=str(tmp_path / "missing.gguf"), mmproj=str(tiny_vlm.mmproj_f32))
    with pytest.raises(ModelLoadError, match="mmproj file not found"):
        make_backend("llama_cpp", model=str(tiny_vlm.gguf_f32), mmproj=str(tmp_path / "none.gguf"))
    with pytest.raises(ModelLoadError, match="not a vision projector"):
        LlamaCppBackend(tiny_vlm.gguf_f32, tiny_vlm.gguf_q8_0).load()
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        LlamaCppBackend(garbage, tiny_vlm.mmproj_f32).load()
    with pytest.raises(ModelLoadError, match=r"no manifest|neither a file nor a manifest"):
        resolve_model_files(model="no-such-model", backend="llama_cpp")


def test_manifest_names_resolve_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("STVG_CACHE", str(tmp_path))  # an empty cache: the 7B files are not here
    with pytest.raises(ModelLoadError, match="stvg-train export"):
        resolve_model_files(model="stvg-r1-7b-q4_k_m", backend="llama_cpp")
    with pytest.raises(ModelLoadError, match="models pull qwen25vl-tiny-random"):
        resolve_model_files(model="qwen25vl-tiny-random", backend="transformers")
    assert resolve_model_files(model="stvg-r1-7b-q4_k_m", backend="http", endpoint="http://127.0.0.1:1/v1")[
        "endpoint"] == "http://127.0.0.1:1/v1"


def test_converter_is_found_or_named_with_its_setup_step(tmp_path, monkeypatch):
    assert gguf.find_converter().name == "convert_hf_to_gguf.py"
    monkeypatch.setenv("STVG_CACHE", str(tmp_path))
    monkeypatch.delenv("STVG_LLAMA_CPP_SRC", raising=False)
    with pytest.raises(gguf.GgufError, match=r"scripts/setup\.sh"):
        gguf.find_converter()


def test_conversion_refuses_other_folders(tmp_path):
    with pytest.raises(gguf.GgufError, match=r"no config\.json"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(gguf.GgufError, match="not Qwen2_5_VLForConditionalGeneration"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "out")
    with pytest.raises(gguf.GgufError, match="unknown quantization"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "out", quant="q3")
