"""Test and demo data, not the runtime graph: synthetic scenes with ground truth (scenes.py), the tiny
detector trained on them (detector.py) and the tiny random-weight Qwen2.5-VL (tiny_vlm.py). They let
tests, the demo and the benchmarks run the real pipeline offline, without downloads."""
