"""Per layer and per chain: streaming == offline for any chunking, and appending never changes the past."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.streaming.helpers import liven, run_graph, speculate
from xcodec_stream.model.acoustic import AcousticDecoder, AcousticEncoder, DacResidualUnit
from xcodec_stream.model.semantic_encoder import SemanticEncoder
from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import OPEN_END, Chain, Conv, ConvTranspose

chunkings = st.lists(st.integers(min_value=0, max_value=9), min_size=0, max_size=12)


class _Seq(nn.Sequential):
    """nn.Sequential is a chain: the tracer reads it like any forward."""


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.integers(1, 9),
    stride=st.integers(1, 5),
    dilation=st.integers(1, 4),
    pad_frac=st.floats(0.0, 1.0),
    per_frame=st.integers(1, 3),
    frames=st.integers(1, 14),
    chunks=chunkings,
    seed=st.integers(0, 1000),
)
def test_conv_equals_offline(kernel, stride, dilation, pad_frac, per_frame, frames, chunks, seed):
    padding = round(pad_frac * (kernel - 1) * dilation)
    conv = liven(nn.Conv1d(3, 4, kernel, stride=stride, dilation=dilation, padding=padding), seed)
    rate = stride * per_frame
    x = torch.randn(2, 3, frames * rate, generator=torch.Generator().manual_seed(seed))
    assume(frames * rate + 2 * padding >= (kernel - 1) * dilation + 1)  # offline needs one whole window
    ref = conv(x)
    graph = StreamGraph(Chain([Conv(conv)]), rate)
    with torch.no_grad():
        y = run_graph(graph, x, chunks)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    stride=st.integers(1, 6),
    extra=st.integers(0, 6),
    pad=st.integers(0, 6),
    out_pad=st.integers(0, 5),
    per_frame=st.integers(1, 3),
    frames=st.integers(1, 12),
    chunks=chunkings,
    seed=st.integers(0, 1000),
)
def test_conv_transpose_equals_offline(stride, extra, pad, out_pad, per_frame, frames, chunks, seed):
    kernel = stride + extra
    pad = min(pad, kernel - 1)
    out_pad = min(out_pad, stride - 1)
    conv = liven(nn.ConvTranspose1d(3, 2, kernel, stride=stride, padding=pad, output_padding=out_pad), seed)
    x = torch.randn(2, 3, frames * per_frame, generator=torch.Generator().manual_seed(seed))
    assume((frames * per_frame - 1) * stride - 2 * pad + kernel + out_pad >= 1)  # offline needs an output
    ref = conv(x)
    graph = StreamGraph(Chain([ConvTranspose(conv)]), per_frame)
    with torch.no_grad():
        y = run_graph(graph, x, chunks)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    dilation=st.sampled_from([1, 3, 9]),
    frames=st.integers(1, 10),
    chunks=chunkings,
    seed=st.integers(0, 1000),
)
def test_residual_unit_equals_offline(dilation, frames, chunks, seed):
    unit = liven(DacResidualUnit(4, dilation), seed)
    x = torch.randn(1, 4, frames * 8, generator=torch.Generator().manual_seed(seed))
    graph = StreamGraph(chain_from_module(_Seq(unit)), 8)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(graph, x, chunks), unit(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(frames=st.integers(1, 40), chunks=chunkings, seed=st.integers(0, 1000))
def test_acoustic_chains_equal_offline(frames, chunks, seed):
    """The DAC encoder and decoder (tiny widths, real strides/kernels/dilations) as one chain each.

    In float64: these random deep chains amplify float32 rounding (offline float32 is itself 1e-4 off
    float64), which would hide a real error; the float32 model is checked end to end in test_decoder."""
    enc = liven(AcousticEncoder(4, (8, 5, 4, 2), 8), seed).double()
    dec = liven(AcousticDecoder(8, 16, (8, 5, 4, 2)), seed).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, frames * 320, generator=g, dtype=torch.float64)
    z = torch.randn(1, 8, frames, generator=g, dtype=torch.float64)
    pairs = (
        (StreamGraph(chain_from_module(enc), 320), x, enc),
        (StreamGraph(chain_from_module(dec), 1), z, dec),
    )
    with torch.no_grad():
        for graph, inp, module in pairs:
            torch.testing.assert_close(run_graph(graph, inp, chunks), module(inp), atol=1e-9, rtol=1e-9)


def test_semantic_encoder_chain_equals_offline():
    se = liven(SemanticEncoder(6, 3, (1, 1), (1, 1), 3, (1, 1)))
    x = torch.randn(2, 6, 23)
    graph = StreamGraph(chain_from_module(se), 1)
    assert graph.delay == 7  # the semantic encoder reads frames t-7 .. t+7
    with torch.no_grad():
        for chunks in ([23], [1] * 23, [5, 0, 2, 9]):
            torch.testing.assert_close(run_graph(graph, x, chunks), se(x), atol=1e-5, rtol=1e-5)


def test_receptive_fields_of_the_default_strides():
    """DESIGN.md: encoder reads t*320-8742 .. t*320+9053 (28 whole frames after frame t), decoder t-10 .. t+10."""
    enc = StreamGraph(chain_from_module(AcousticEncoder(4, (8, 5, 4, 2), 8)), 320)
    dec = StreamGraph(chain_from_module(AcousticDecoder(8, 16, (8, 5, 4, 2))), 1)
    assert enc.delay == 28
    assert 9 * 320 < dec.delay <= 10 * 320


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_appending_input_never_changes_earlier_output(which):
    torch.manual_seed(0)
    if which == "encoder":
        module, rate, x = liven(AcousticEncoder(4, (8, 5, 4, 2), 8)), 320, torch.randn(1, 1, 60 * 320)
    else:
        module, rate, x = liven(AcousticDecoder(8, 16, (8, 5, 4, 2))), 1, torch.randn(1, 8, 60)
    graph = StreamGraph(chain_from_module(module), rate)
    with torch.no_grad():
        short = run_graph(graph, x[..., : 40 * rate], [3, 4, 5], flush=False)
        # same chunks over the common prefix: float32 rounding depends on chunk lengths (see the float64 test)
        long = run_graph(graph, x, [3, 4, 5, 28, 7], flush=False)
    assert short.shape[-1] > 0
    torch.testing.assert_close(long[..., : short.shape[-1]], short, atol=0, rtol=0)


@pytest.mark.parametrize("which", ["encoder", "decoder"])
@pytest.mark.parametrize("cut", [1, 2, 7, 13])
def test_speculative_outputs_equal_offline_on_the_signal_cut_there(which, cut):
    """A speculative call commits `cut` frames and brings out every output the offline module gives on the
    signal cut there (zeros past the end, as offline padding); its state takes the committed part only."""
    torch.manual_seed(1)
    if which == "encoder":
        module, x = liven(AcousticEncoder(4, (8, 5, 4, 2), 8)).double(), torch.randn(2, 1, 20 * 320)
        graph = StreamGraph(chain_from_module(module), 320)
    else:
        module, x = liven(AcousticDecoder(8, 16, (8, 5, 4, 2))).double(), torch.randn(2, 8, 20)
        graph = StreamGraph(chain_from_module(module), 1)
    x = x.double()
    r = graph.in_rate
    with torch.no_grad():
        ref = module(x[..., : cut * r])
        got = speculate(graph, x, cut)
        assert got.shape[-1] >= ref.shape[-1]
        torch.testing.assert_close(got[..., : ref.shape[-1]], ref, atol=1e-9, rtol=1e-9)
        assert not got[..., ref.shape[-1] :].any()  # past the end: zeros
        # the speculation left the state as a plain committed call does
        s0 = graph.init_state(2, x.device, x.dtype)
        pos, end = torch.zeros(2, dtype=torch.long), torch.full((2,), OPEN_END)
        _, spec_state = graph.step(x[..., : cut * r], s0, pos, torch.full((2,), cut), speculate=True)
        _, plain_state = graph.step(x[..., : cut * r], s0, pos, end)
    assert spec_state.keys() == plain_state.keys()
    for k in plain_state:
        torch.testing.assert_close(
            spec_state[k], plain_state[k], atol=1e-12, rtol=0
        )  # same up to kernel choice


@pytest.mark.parametrize("which", ["encoder", "decoder"])
@pytest.mark.parametrize("lookahead", [0, 2, 5])
def test_trimmed_speculation_computes_only_what_the_output_reads(which, lookahead):
    """`trim(delay - lag)` (a step that keeps outputs up to `lag` frames behind its input): every step's kept
    outputs and its new state equal the untrimmed graph's, over several steps, while the layers compute less
    of the speculative tail."""
    torch.manual_seed(2)
    if which == "encoder":
        make, rate, x = lambda: AcousticEncoder(4, (8, 5, 4, 2), 8), 320, torch.randn(2, 1, 12 * 320)
    else:
        make, rate, x = lambda: AcousticDecoder(8, 16, (8, 5, 4, 2)), 1, torch.randn(2, 8, 12)
    module = liven(make()).double()
    full, trimmed = (StreamGraph(chain_from_module(module), rate) for _ in range(2))
    out_rate = full.out_rate
    need = full.delay - lookahead * out_rate
    trimmed.trim(need)
    assert trimmed.spec_out == min(full.spec_out, need)
    tails = [sum(n.spec_out for n in g.chain.nodes()) for g in (full, trimmed)]
    assert tails[1] < tails[0] if lookahead else tails[1] == tails[0]  # lag 0: the output reads all of it
    x = x.double()
    states = [g.init_state(2, x.device, x.dtype) for g in (full, trimmed)]
    K = 3
    with torch.no_grad():
        for i in range(4):
            pos = torch.full((2,), i * K)
            stop = pos + K  # the signal taken to end where the input stops
            outs = []
            for j, g in enumerate((full, trimmed)):
                y, states[j] = g.step(
                    x[..., i * K * rate : (i + 1) * K * rate], states[j], pos, stop, speculate=True
                )
                outs.append(y[..., : K * out_rate + need])
            torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=0)
            for k in states[0]:
                torch.testing.assert_close(states[1][k], states[0][k], atol=0, rtol=0)


def _count_conv_outputs(graph: StreamGraph) -> list[int]:
    """Wraps every conv of `graph` to add the outputs it computes to the returned counter."""
    counter = [0]
    for node in graph.chain.nodes():
        if isinstance(node, Conv):
            conv = node._conv

            def counted(cat, n_out, conv=conv):
                counter[0] += n_out
                return conv(cat, n_out)

            node._conv = counted
    return counter


@pytest.mark.parametrize(
    "which, lookahead, K",
    [
        ("decoder", 0, 3),  # kept outputs all in the tail: split in two calls
        ("decoder", 5, 1),
        ("decoder", 9, 3),  # the kept outputs start among the committed ones: one call, front skipped
        ("encoder", 3, 4),
        ("encoder", 27, 3),
    ],
)
def test_kept_outputs_compute_only_what_they_and_the_next_state_read(which, lookahead, K):
    """`keep(first, K)`: every step's kept outputs and new state equal the plain speculative graph's, from the
    stream's start (warm-up masks) over several steps, and the convs compute fewer outputs."""
    torch.manual_seed(3)
    if which == "encoder":
        make, rate, x = lambda: AcousticEncoder(4, (8, 5, 4, 2), 8), 320, torch.randn(2, 1, 6 * K * 320)
    else:
        make, rate, x = lambda: AcousticDecoder(8, 16, (8, 5, 4, 2)), 1, torch.randn(2, 8, 6 * K)
    module = liven(make()).double()
    full, kept = (StreamGraph(chain_from_module(module), rate) for _ in range(2))
    first = full.delay - lookahead * full.out_rate
    n = K * full.out_rate
    kept.keep(first, K)
    assert (kept.split is not None) == (first >= n)
    counts = [_count_conv_outputs(g) for g in (full, kept)]
    x = x.double()
    states = [g.init_state(2, x.device, x.dtype) for g in (full, kept)]
    with torch.no_grad():
        for i in range(6):
            pos = torch.full((2,), i * K)
            stop = pos + K  # the signal taken to end where the input stops
            chunk = x[..., i * K * rate : (i + 1) * K * rate]
            y, states[0] = full.step(chunk, states[0], pos, stop, speculate=True)
            got, states[1] = kept.step_kept(chunk, states[1], pos, stop)
            torch.testing.assert_close(got, y[..., first : first + n], atol=1e-10, rtol=1e-12)
            assert states[1].keys() == states[0].keys()
            for k in states[0]:  # (computed over other lengths: the same up to rounding)
                torch.testing.assert_close(states[1][k], states[0][k], atol=1e-10, rtol=1e-12)
    assert counts[1][0] < counts[0][0]


def test_kept_calls_need_a_plan():
    graph = StreamGraph(chain_from_module(liven(AcousticDecoder(8, 16, (8, 5, 4, 2)))), 1)
    state = graph.init_state(1, torch.device("cpu"), torch.float32)
    pos, end = torch.zeros(1, dtype=torch.long), torch.full((1,), OPEN_END)
    with pytest.raises(RuntimeError, match="keep"):
        graph.step_kept(torch.zeros(1, 8, 2), state, pos, end)
    with pytest.raises(ValueError, match="speculate=True"):
        graph.step(torch.zeros(1, 8, 0), state, pos, end, frames=0)
