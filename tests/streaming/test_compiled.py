"""The static step can be captured whole (no graph breaks) and, compiled, gives what the eager step gives."""

from __future__ import annotations

import pytest
import torch

from tests.streaming.test_decoder import stream_decode
from tests.streaming.test_encoder import stream_encode
from xcodec_stream.streaming.slots import bucket_size, resolve_compile


def _capture(engine, backend: str) -> None:
    """Swap the engine's step for a whole-graph capture of it (fullgraph: a graph break raises)."""
    import torch._dynamo

    torch._dynamo.reset()
    engine._step_fn = torch.compile(engine._core, backend=backend, fullgraph=True, dynamic=False)


def _loopback(model, preset: str, speech: torch.Tensor, backend: str | None, batch: int = 2):
    enc = model.streaming_encoder(batch_size=batch, latency=preset)
    dec = model.streaming_decoder(batch_size=batch, latency=preset)
    if backend is not None:
        _capture(enc, backend)
        _capture(dec, backend)
    x = torch.cat([speech, speech.flip(1) * 0.5])[:batch]
    codes = stream_encode(enc, x, [640, 1000, 333])
    audio = stream_decode(dec, codes, [3, 5])
    return codes, audio


@pytest.mark.parametrize("preset", ["balanced", "low"])
def test_step_is_captured_whole(tiny_model, speech, preset):
    """Dynamo traces every step (warm-up, steady state, flush; buckets 1 and 2) as one graph each."""
    ref_codes, ref_audio = _loopback(tiny_model, preset, speech[:, :12_000], None)
    codes, audio = _loopback(tiny_model, preset, speech[:, :12_000], "eager")
    assert torch.equal(codes, ref_codes)
    assert (audio - ref_audio).abs().max() <= 1e-6


@pytest.mark.slow
def test_inductor_step_equals_eager(tiny_model, speech):
    """Compiled with inductor (the CPU's `compile` mode): codes identical, audio within 1e-5 of eager."""
    pytest.importorskip("torch._inductor")
    ref_codes, ref_audio = _loopback(tiny_model, "balanced", speech[:, :8_000], None, batch=1)
    codes, audio = _loopback(tiny_model, "balanced", speech[:, :8_000], "inductor", batch=1)
    assert torch.equal(codes, ref_codes)
    assert (audio - ref_audio).abs().max() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu-check.sh runs it on a GPU)"
)
def test_cuda_graph_step_equals_eager(speech):
    """On a GPU: the step captured as CUDA graphs (one per bucket, warmed up first) gives the eager step's
    codes and audio."""
    from xcodec_stream.model.xcodec import XcodecModel

    model = XcodecModel.from_pretrained("random:tiny", device="cuda")
    x = torch.cat([speech, speech.flip(1) * 0.5])[:, :12_000]
    outs = []
    for mode in ("eager", "cuda-graphs"):
        enc = model.streaming_encoder(batch_size=2, latency="balanced", compile=mode)
        dec = model.streaming_decoder(batch_size=2, latency="balanced", compile=mode)
        enc.warm_up()
        dec.warm_up()
        codes = stream_encode(enc, x, [640, 1000])
        outs.append((codes, stream_decode(dec, codes, [4])))
    assert torch.equal(outs[0][0], outs[1][0])
    assert (outs[0][1] - outs[1][1]).abs().max() <= 1e-4


def test_buckets_and_modes():
    assert [bucket_size(n, 6) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 4, 6, 6]
    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu) == "eager" and resolve_compile(False, cpu) == "eager"
    assert resolve_compile(True, cpu) == "eager" and resolve_compile("compile", cpu) == "compile"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_compile("cuda-graphs", cpu)
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("fast", cpu)
