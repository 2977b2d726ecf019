"""`eval --quality`: the metrics, the Opus reference and the command's outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_stream.cli.main import main
from xcodec_stream.evaluation import opus
from xcodec_stream.evaluation.quality import BEGIN, END, pesq_wb, stoi

CLIP = "tests/data/arctic_a0007.wav"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = sf.read(CLIP, dtype="float32")
    assert rate == 16000
    return audio


def test_a_clip_against_itself_scores_at_the_top(speech):
    assert pesq_wb(speech, speech) > 4.5
    assert stoi(speech, speech) > 0.99


def test_a_clip_against_noise_scores_low(speech):
    noise = np.random.default_rng(0).standard_normal(speech.shape[0]).astype(np.float32) * speech.std()
    assert pesq_wb(speech, noise) < 1.5
    assert stoi(speech, noise) < 0.5


def test_pesq_of_silence_is_nan_not_an_error(speech):
    assert math.isnan(pesq_wb(speech, np.zeros_like(speech)))


def test_opus_at_16_kbps_is_intelligible_and_aligned(speech):
    reason = opus.unavailable()
    if reason:
        pytest.skip(reason)
    result = opus.round_trip(speech, 16)
    assert result.audio.shape == speech.shape
    assert stoi(speech, result.audio) > 0.9
    assert 12 < result.kbps < 18
    # lookahead removed: the decoded signal lines up with the input, not `lookahead` samples later
    lags = range(-200, 201)
    n = speech.shape[0]
    corr = [
        float(np.dot(speech[max(0, -k) : n - max(0, k)], result.audio[max(0, k) : n + min(0, k)]))
        for k in lags
    ]
    assert abs(lags[int(np.argmax(corr))]) <= 2


def test_codes_at_a_bandwidth_are_the_first_quantizers_of_the_highest(speech):
    """quality.codec_outputs encodes once and slices the codes for every bandwidth; this is why it may."""
    from xcodec_stream.cli.encode import load_model

    model = load_model("random:tiny", "cpu", "float32")
    x = torch.from_numpy(speech[:8000].copy())
    with torch.inference_mode():
        top = model.encode(x[None, None]).audio_codes
        enc = model.streaming_encoder(latency="low")
        streamed = torch.cat([enc.step(x[None]), enc.flush()], dim=-1)
        for kbps in model.config.target_bandwidths:
            n_q = model.num_quantizers_for_bandwidth(kbps)
            assert torch.equal(model.encode(x[None, None], kbps).audio_codes, top[:, :n_q])
            enc = model.streaming_encoder(bandwidth=kbps, latency="low")
            assert torch.equal(torch.cat([enc.step(x[None]), enc.flush()], dim=-1), streamed[:, :n_q])


def test_eval_quality_writes_section_plot_and_json(tmp_path, speech):
    clip = tmp_path / "short.wav"
    sf.write(clip, speech[:24000], 16000)  # 1.5 s: keeps the test fast
    out = tmp_path / "QUALITY.md"
    before, after = "# Quality\n\nHand-written text stays.\n\n", "\n\nAnd so does this.\n"
    out.write_text(f"{before}{BEGIN}\nold numbers\n{END}{after}")
    card = tmp_path / "card" / "README.md"  # a second file gets the same section (a model card)
    card.parent.mkdir()
    args = ["eval", "--quality", "--model", "random:tiny", "--clips", str(clip), "--out", str(out), str(card)]
    args += ["--plot", str(tmp_path / "q.png"), "--json", str(tmp_path / "q.json")]
    assert main([*args, "--bandwidths", "4", "--presets", "balanced", "--quiet"]) == 0
    card_text = card.read_text()
    assert card_text.count(BEGIN) == 1 and "| offline |" in card_text and "](../q.png)" in card_text

    text = out.read_text()
    assert text.startswith(before + BEGIN) and text.endswith(END + after)
    assert "old numbers" not in text and text.count(BEGIN) == 1
    assert "| offline |" in text and "| `balanced` |" in text and "| Opus |" in text
    assert "random-weight proxy" in text and "eval --quality --model random:tiny" in text
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    record = json.loads((tmp_path / "q.json").read_text())
    assert record["model"] == "random:tiny" and record["clips"][0]["name"] == "short.wav"
    codec = [r for r in record["results"] if r["mode"] != "Opus"]
    assert [(r["mode"], r["kbps"]) for r in codec] == [("offline", 4.0), ("balanced", 4.0)]
    opus_rows = [r for r in record["results"] if r["mode"] == "Opus"]
    assert record["opus"]["available"] == bool(opus_rows)
    if opus_rows:
        assert {4.0, 6.0, 8.0} <= {r["kbps"] for r in opus_rows}
    for r in codec + [r for r in opus_rows if r["kbps"] in record["opus"]["shown_kbps"]]:
        for score in (r, r["per_clip"]["short.wav"]):
            assert 1.0 <= score["pesq_wb"] <= 4.65, r
            assert -1.0 <= score["stoi"] <= 1.0, r


def test_eval_quality_rejects_a_bandwidth_the_model_lacks(tmp_path, capsys):
    args = ["eval", "--quality", "--model", "random:tiny", "--clips", CLIP, "--bandwidths", "3"]
    assert main([*args, "--out", str(tmp_path / "q.md"), "--quiet"]) == 1
    assert "not in the model's" in capsys.readouterr().err


def test_without_libopus_the_opus_row_says_why(tmp_path, speech, monkeypatch):
    monkeypatch.setattr(opus, "unavailable", lambda: "opuslib cannot load libopus (test)")
    clip = tmp_path / "short.wav"
    sf.write(clip, speech[:24000], 16000)
    out = tmp_path / "QUALITY.md"
    args = ["eval", "--quality", "--model", "random:tiny", "--clips", str(clip), "--out", str(out)]
    assert main([*args, "--bandwidths", "4", "--presets", "low", "--quiet"]) == 0
    text = out.read_text()
    assert "| Opus | n/a |" in text and "Opus: n/a, opuslib cannot load libopus (test)." in text
    record = json.loads((tmp_path / "quality.json").read_text())
    assert record["opus"] == {
        **record["opus"],
        "available": False,
        "reason": "opuslib cannot load libopus (test)",
    }
    assert all(r["mode"] != "Opus" for r in record["results"])
