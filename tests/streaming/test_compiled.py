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
    engine._step_fn = torch.compile(engine._flat_core, backend=backend, fullgraph=True, dynamic=False)


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


@pytest.mark.slow
def test_only_the_batch_dimension_is_symbolic_across_presets(tiny_model):
    """A daemon compiles the step of every preset it serves in one process: to dynamo these are one code object,
    so a second step size would otherwise make the time axis symbolic too (inductor then generated code that
    referred to an unbound size). Traced with a recording backend: every graph's inputs keep static sizes past
    the batch dimension."""
    import torch._dynamo

    torch._dynamo.reset()
    shapes = []

    def record(gm, example_inputs):  # the traced inputs' sizes, symbolic ones as torch.SymInt
        for node in gm.graph.find_nodes(op="placeholder"):
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor):
                shapes.append(tuple(value.shape))
        return gm.forward

    for preset in ("low", "balanced"):
        for engine in (
            tiny_model.streaming_encoder(batch_size=2, latency=preset, compile="compile"),
            tiny_model.streaming_decoder(batch_size=2, latency=preset, compile="compile"),
        ):
            engine._step_fn = engine.compiled(record)
            engine.warm_up()
    assert shapes
    symbolic = [s for s in shapes if not all(isinstance(d, int) for d in s[1:])]
    assert symbolic == []
    assert any(not isinstance(s[0], int) for s in shapes)  # the batch is (buckets 2 and more share a graph)


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


def test_compiled_batch_dimension_is_dynamic(tiny_model, speech):
    """`compile` (inductor on a CPU) builds one graph for every batch of 2 or more rows, not one per bucket:
    steps of 2 and 3 rows share a graph (traced here with dynamo's eager backend, which compiles in
    seconds) and give what the eager step gives."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    x = torch.cat([speech, speech.flip(1) * 0.5, speech * 0.3])[:, :9_000]
    outs = {}
    for mode in ("eager", "compile"):
        enc = tiny_model.streaming_encoder(batch_size=3, latency="balanced", compile=mode)
        dec = tiny_model.streaming_decoder(batch_size=3, latency="balanced", compile=mode)
        if mode == "compile":
            enc._step_fn, dec._step_fn = enc.compiled(counting), dec.compiled(counting)
            assert enc.buckets() == [1, 2]
        codes, audio = [], []
        for rows in (
            [0, 1],
            [0, 1, 2],
            [0, 1, 2],
            [0, 1],
            [0, 1, 2],
            [0, 1, 2],
            [0, 1],
        ):  # 2 and 3 rows: one graph
            step = {r: x[r, : 1280 * (len(codes) + 1)][-1280:].numpy() for r in rows}
            c = enc.step_slots(step)
            codes.append(c)
            audio.append(dec.step_slots({r: c[r] for r in rows if c[r].shape[-1]}))
        outs[mode] = codes, audio
    assert len(graphs) == 2  # the encoder's graph and the decoder's, each for 2 and 3 rows
    assert sum(a.shape[-1] for step in outs["eager"][1] for a in step.values()) > 0  # audio came out
    for (c0, a0), (c1, a1) in zip(
        zip(*outs["eager"], strict=True), zip(*outs["compile"], strict=True), strict=True
    ):
        for r in c0:
            assert torch.equal(torch.as_tensor(c0[r]), torch.as_tensor(c1[r]))
        for r in a0:
            assert a0[r].shape == a1[r].shape
            torch.testing.assert_close(torch.as_tensor(a1[r]), torch.as_tensor(a0[r]), rtol=0, atol=1e-6)
