"""The training loop on the tiny config: it learns, resumes bit for bit, and exports a checkpoint that our
loader (strict) and transformers both read with the same codes."""

from __future__ import annotations

import json
import warnings

import pytest
import soundfile as sf
import torch

from xcodec_stream import XcodecConfig, XcodecModel
from xcodec_stream.model.layers import Snake1d, snake
from xcodec_stream.model.random_init import calibration_signal
from xcodec_stream.training.recipe import TrainConfig, speech_small_config
from xcodec_stream.training.trainer import CURVES_NAME, LOG_NAME, STATE_NAME, Trainer
from xcodec_stream.training.vq import EmaResidualVQ

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for seed in range(3):
        sf.write(folder / f"clip{seed}.wav", calibration_signal(2.0, seed=seed + 1), 16000)
    return folder


def _config(**overrides) -> TrainConfig:
    base = dict(
        steps=6,
        batch_size=2,
        segment_seconds=0.32,
        warmup_steps=1,
        vq_start=2,
        gan_start=3,
        checkpoint_every=3,
        min_rms=1e-4,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _trainer(corpus, out, config, resume=False):
    return Trainer(corpus, out, config, resume=resume, progress=False, model_config=XcodecConfig.tiny())


def test_snake_training_path_equals_inference_path():
    x = torch.randn(2, 4, 50)
    alpha = torch.rand(1, 4, 1) + 0.5
    expected = snake(x, alpha)
    alpha_g = alpha.clone().requires_grad_(True)
    y = snake(x, alpha_g)
    assert torch.allclose(y, expected, atol=1e-6)
    y.sum().backward()  # the inference path's in-place ops would make this raise
    assert alpha_g.grad is not None and torch.isfinite(alpha_g.grad).all()


def test_snake_follows_an_optimizer_step_between_evaluations():
    """Snake1d keeps 1/(alpha + 1e-9) between calls without grad (streaming steps); an in-place update of
    alpha (an optimizer step during training, then an evaluation under no_grad) must not leave it stale."""
    m = Snake1d(4)
    x = torch.randn(2, 4, 50)
    with torch.no_grad():
        m.alpha.copy_(torch.rand(1, 4, 1) + 0.5)
        first = m(x)
        assert torch.equal(first, snake(x, m.alpha))
        m.alpha.mul_(2.0)  # as an optimizer step does: same storage, new values
        second = m(x)
    assert torch.equal(second, snake(x, m.alpha.detach()))
    assert not torch.equal(first, second)
    with torch.inference_mode():  # inference tensors have no version counter: still computed once
        m2 = Snake1d(4)
        assert torch.equal(m2(x), snake(x, m2.alpha))


def test_ema_vq_moves_codes_to_cluster_means_and_reseeds_dead_ones():
    embed = torch.zeros(1, 4, 2)
    vq = EmaResidualVQ(embed, decay=0.0, dead_threshold=0.5, seed=0).train()
    points = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.0, 5.0], [0.0, 5.2]])
    vq.seed_codebooks(points, iters=5)
    z = points.t()[None]  # (1, D=2, F=4)
    quantized, commit, codes = vq(z, 1)
    # with decay 0 each used code is exactly the mean of what it was given
    means = {int(c): points[codes[0, 0] == c].mean(0) for c in codes[0, 0].unique()}
    for c, mean in means.items():
        assert torch.allclose(embed[0, c], mean, atol=1e-4)
    # codes nobody chose were moved onto points of the batch
    for c in set(range(4)) - set(means):
        assert any(torch.allclose(embed[0, c], p) for p in points)
    # straight-through: gradients reach the input as if unquantized
    z = points.t()[None].clone().requires_grad_(True)
    quantized, commit, _ = vq.eval()(z, 1)
    quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_training_learns_and_writes_a_checkpoint_both_loaders_read(corpus, tmp_path):
    import transformers

    out = _trainer(corpus, tmp_path / "run", _config(steps=12, gan_start=6)).run()
    assert (out / CURVES_NAME).stat().st_size > 10_000
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(12))
    assert all(torch.isfinite(torch.tensor(r["mel"])) for r in log)
    assert "adv" in log[-1] and "n_q" in log[-1] and "adv" not in log[5]
    assert sum(r["mel"] for r in log[-3:]) < sum(r["mel"] for r in log[:3])  # it learns
    ours = XcodecModel.from_pretrained(out)  # strict: every key, every shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = transformers.XcodecModel.from_pretrained(out).eval()
    x = torch.from_numpy(calibration_signal(0.7, seed=9))[None, None]
    with torch.inference_mode():
        codes = ours.encode(x).audio_codes
        assert torch.equal(tm.encode(x).audio_codes, codes)
        assert codes.unique().numel() > 5  # the codebooks were seeded, not left at zero
        assert (tm.decode(codes).audio_values - ours.decode(codes).audio_values).abs().max() < 1e-4


def test_resume_continues_the_same_run(corpus, tmp_path):
    straight = _trainer(corpus, tmp_path / "a", _config())
    straight.run()
    first = _trainer(corpus, tmp_path / "b", _config())
    assert first.run(stop_at=3) is None
    assert (tmp_path / "b" / STATE_NAME).is_file()
    resumed = _trainer(corpus, tmp_path / "b", _config(), resume=True)
    assert resumed.step == 3
    resumed.run()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(6))


def test_speech_small_recipe_fits_the_size_budget():
    from xcodec_stream.model.loading import to_transformers_state_dict

    model = XcodecModel(speech_small_config())
    size = sum(v.numel() * v.element_size() for v in to_transformers_state_dict(model).values())
    assert size <= 20e6


def test_init_from_starts_from_exactly_the_exported_model(corpus, tmp_path, monkeypatch):
    checkpoint = _trainer(corpus, tmp_path / "first", _config()).run()
    exported = XcodecModel.from_pretrained(checkpoint)
    config = _config(vq_start=0, gan_start=2, disc_warmup=2, steps=3)
    monkeypatch.setattr(
        Trainer, "seed_codebooks", lambda self: pytest.fail("k-means re-seeded the codebooks")
    )
    trainer = Trainer(
        corpus,
        tmp_path / "next",
        config,
        progress=False,
        model_config=XcodecConfig.tiny(),
        init_from=checkpoint,
    )
    assert bool(trainer.vq.seeded)
    # the training model (weight-normed, EMA codebooks) computes what the checkpoint computes, before any step
    x = torch.from_numpy(calibration_signal(0.64, seed=9))[None, None]
    with torch.no_grad():
        trainer.vq.eval()
        zq, _, codes = trainer.vq(trainer.model.latent(x), trainer.model.config.num_quantizers)
        audio = trainer.model.decode_latent(zq)
        trainer.vq.train()
    with torch.inference_mode():
        expected_codes = exported.encode(x).audio_codes
        expected_audio = exported.decode(expected_codes).audio_values
    assert torch.equal(codes, expected_codes)
    assert (audio - expected_audio).abs().max() < 1e-6
    # and folding it back at step 0 gives the checkpoint's weights
    again = XcodecModel.from_pretrained(trainer.export())
    for (name, a), b in zip(exported.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=0), name
    # the discriminators learn from step 0, the generator gets their loss from gan_start
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "next" / LOG_NAME).read_text().splitlines()]
    assert [("disc" in r, "adv" in r) for r in log] == [(True, False), (True, False), (True, True)]
    assert all("n_q" in r for r in log)  # quantized from the first step
