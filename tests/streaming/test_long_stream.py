"""A long stream: 10 000 steps of encode + decode; state memory and Python-side containers do not grow."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def inventory(root: object) -> tuple[int, dict[str, int]]:
    """Bytes of every tensor reachable from `root`'s attributes, and the size of every list/dict/set there.

    Modules (the model) are summarised by their state_dict size: a lazily registered buffer would show."""
    seen: set[int] = set()
    tensor_bytes = 0
    sizes: dict[str, int] = {}

    def visit(obj: object, path: str) -> None:
        nonlocal tensor_bytes
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            tensor_bytes += obj.numel() * obj.element_size()
        elif isinstance(obj, nn.Module):
            sizes[path + ".state_dict"] = len(obj.state_dict())
        elif isinstance(obj, np.ndarray):
            sizes[path + ".ndarray"] = obj.size
        elif isinstance(obj, (list, tuple, set, dict)):
            sizes[path] = len(obj)
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            for k, v in items:
                visit(v, f"{path}[{k}]")
        elif type(obj).__module__.startswith("xcodec_stream"):
            for k, v in vars(obj).items():
                visit(v, f"{path}.{k}")

    visit(root, "engine")
    return tensor_bytes, sizes


def test_ten_thousand_steps_keep_memory_flat(tiny_model):
    enc = tiny_model.streaming_encoder(latency="balanced")
    dec = tiny_model.streaming_decoder(latency="balanced")
    dec.reset(
        0, lead=enc.lead_for(dec.step_frames)
    )  # the decoder steps exactly when the encoder's codes arrive
    g = torch.Generator().manual_seed(0)
    chunk = 32  # 10 000 steps = 1 000 frames = 20 s
    out_samples = code_frames = 0
    marks = {}
    for i in range(10_000):
        x = torch.randn(1, chunk, generator=g) * 0.1
        codes = enc.step(x)
        code_frames += codes.shape[-1]
        out_samples += dec.step(codes).shape[-1]
        if i in (999, 9_999):
            marks[i] = (enc.state_bytes(), dec.state_bytes(), inventory(enc), inventory(dec))
    early, late = marks[999], marks[9_999]
    assert early[0] == late[0] and early[1] == late[1]  # per-session state
    assert (
        early[2] == late[2] and early[3] == late[3]
    )  # every tensor and container reachable from the engines
    assert 1_000 - enc.lookahead_frames <= code_frames <= 1_000
    assert out_samples == code_frames * 320 - dec.lookahead_samples
