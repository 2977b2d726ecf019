"""The streaming engine on other devices and in bf16 (issue 6's speed levers keep their stated fidelity).

Each test runs on the CPU in CI and on CUDA where a GPU is present (skipped with the reason otherwise)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from xcodec_stream.streaming.fidelity import snr_db

NO_CUDA = "no CUDA device here (CI has none); run `pytest -m gpu` on a GPU machine"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
    ),
]


def _model(device: str, dtype: torch.dtype = torch.float32):
    from xcodec_stream import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return XcodecModel.from_pretrained("random:tiny").to(device=device, dtype=dtype)


def _loopback(model, x: torch.Tensor, preset: str, chunk: int = 640) -> tuple[torch.Tensor, torch.Tensor]:
    enc, dec = model.streaming_encoder(latency=preset), model.streaming_decoder(latency=preset)
    codes, audio = [], []
    for i in range(0, x.shape[1], chunk):
        c = enc.step(x[:, i : i + chunk])
        codes.append(c)
        audio.append(dec.step(c))
    c = enc.flush()
    codes += [c]
    audio += [dec.step(c), dec.flush()]
    return torch.cat(codes, dim=-1), torch.cat(audio, dim=-1)


@pytest.fixture(scope="module")
def clip(speech_clip) -> torch.Tensor:
    return torch.from_numpy(speech_clip[:32_000].copy())[None]  # 2 s of speech


@pytest.fixture(scope="module")
def reference(clip):
    return _loopback(_model("cpu"), clip, "balanced")


@pytest.mark.parametrize("device", DEVICES[1:])
def test_streaming_on_device_matches_cpu(device, clip, reference):
    """Same codes (a rare near-tie may resolve differently in another kernel: >= 99 %), and the exact decoder
    on the device gives the CPU's audio for the same codes."""
    model = _model(device)
    codes, audio = _loopback(model, clip, "balanced")
    assert codes.device.type == audio.device.type == "cpu"  # results always come back as CPU tensors
    assert codes.shape == reference[0].shape and audio.shape == reference[1].shape
    assert (codes == reference[0]).double().mean() >= 0.99
    dec = model.streaming_decoder(latency="exact")
    same = torch.cat([dec.step(reference[0]), dec.flush()], dim=-1)
    cpu = _model("cpu").streaming_decoder(latency="exact")
    want = torch.cat([cpu.step(reference[0]), cpu.flush()], dim=-1)
    assert (same - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


# random:tiny's bf16 convolutions that PyTorch's oneDNN AMX kernel miscomputes (see cpu_bf16_conv_broken):
# (out_channels, in_channels / groups, kernel, stride, padding, groups, input length). The first is the
# acoustic encoder's first strided conv (offline), the second HuBERT's grouped positional conv (streaming).
AMX_BROKEN_CONVS = ((8, 4, 16, 8, 4, 1, 800), (32, 8, 16, 1, 0, 4, 22))


@functools.cache
def cpu_bf16_conv_broken() -> bool:
    """Whether this CPU's bf16 convolutions give wrong results (not bf16 rounding: ~0 dB SNR against float32)
    for random:tiny's small-channel shapes (AMX_BROKEN_CONVS); probed, one call each.

    The hardware: CPUs with AMX-BF16 (Intel Xeon Sapphire Rapids and later), where PyTorch sends bf16
    convolutions to oneDNN's AMX kernel `brg_conv_fwd:avx10_1_512_amx` (seen with torch 2.11.0, oneDNN
    3.10.2). The same shapes are right (~51 dB, bf16 rounding) with oneDNN capped below AMX
    (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16: AVX512-BF16 instructions without AMX) or to AVX2 (as on the
    AVX2-only AMD EPYC where this test always passed), and with oneDNN off. random:full's convolutions (16
    and more channels per group) are right even with AMX. A fixed PyTorch/oneDNN makes this False again,
    and the test then states the full tolerance here too."""
    gen = torch.Generator().manual_seed(0)
    for c_out, c_in, k, stride, padding, groups, n in AMX_BROKEN_CONVS:
        w = torch.randn(c_out, c_in, k, generator=gen).bfloat16()
        x = torch.randn(1, c_in * groups, n, generator=gen).bfloat16()
        with torch.inference_mode():
            y = torch.nn.functional.conv1d(x, w, stride=stride, padding=padding, groups=groups).float()
            want = torch.nn.functional.conv1d(
                x.float(), w.float(), stride=stride, padding=padding, groups=groups
            )
        if snr_db(want.flatten(), y.flatten()) < 30.0:  # bf16 rounding gives ~51 dB here
            return True
    return False


def _bf16_agreement(model, clip, reference) -> torch.Tensor:
    """Per-quantizer share of bf16 streaming codes equal to float32's (after checking lengths and dtype)."""
    codes, audio = _loopback(model, clip, "balanced")
    assert codes.shape == reference[0].shape and audio.shape == reference[1].shape
    assert audio.dtype == torch.float32
    return (codes == reference[0]).double().mean(dim=(0, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_streaming_within_stated_tolerance(device, clip, reference):
    """bf16 weights and activations (VQ distances in float32): what docs/BENCHMARKS.md states for bf16 holds
    here too on random:tiny: >= 90 % of first-quantizer codes equal to float32's, >= 80 % over all
    quantizers, lengths exact, float32 audio out, within 20 dB SNR of float32's decode of the same codes.

    Where the CPU's bf16 convolutions are miscomputed (`cpu_bf16_conv_broken`: oneDNN's AMX kernel), the
    code agreement is stated for bf16 arithmetic itself (oneDNN off: measured 95 % / 92 % on a Xeon with
    AMX), and what the engine gives with the broken kernel is held to a floor only: its first-quantizer
    codes agree >= 20 % (measured 43 %; chance is 1/1024). The decoder (no such shapes) is held to the
    stated SNR either way (measured 46.9 dB)."""
    model = _model(device, torch.bfloat16)
    if device == "cpu" and cpu_bf16_conv_broken():
        agree = _bf16_agreement(model, clip, reference)
        assert agree[0] >= 0.20, agree.tolist()  # the broken kernel: far from the tolerance, far above chance
        with warnings.catch_warnings():  # flags() also sets oneDNN's TF32 flag, which warns without an XPU
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                agree = _bf16_agreement(model, clip, reference)
    else:
        agree = _bf16_agreement(model, clip, reference)
    assert agree[0] >= 0.90 and agree.mean() >= 0.80, agree.tolist()
    dec = model.streaming_decoder(latency="exact")
    bf16 = torch.cat([dec.step(reference[0]), dec.flush()], dim=-1)
    fp32 = _model("cpu").streaming_decoder(latency="exact")
    want = torch.cat([fp32.step(reference[0]), fp32.flush()], dim=-1)
    assert snr_db(want[0], bf16[0].float()) >= 20.0
