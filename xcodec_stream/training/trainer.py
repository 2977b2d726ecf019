"""The training loop of `xcodec-stream train`: X-Codec as a GAN-trained codec on speech crops.

One step: crops -> frozen semantic model -> both encoders -> fc -> EMA residual VQ (a random 1..n_q
codebooks on part of the steps) -> fc2 -> acoustic decoder; loss = multi-scale mel + waveform L1 +
commitment, plus adversarial and feature-matching terms from the discriminators once they have started.
The first `vq_start` steps train a plain autoencoder, then the codebooks are seeded by k-means on the
latents the encoder makes by then: codebooks seeded on a random encoder's output would be mostly dead.

`init_from` starts from an exported checkpoint folder instead of a random model: its plain weights are
loaded before the weight norm is applied (so g = ||v|| per output channel and v = w: the effective weights
are the checkpoint's), its codebooks become the EMA codebooks (no k-means re-seeding), and the
discriminators and optimisers start fresh. Step 0 of such a run is step 0 of its own schedule.

State (model, EMA statistics, discriminators, optimisers, RNGs, the log) is written to `train-state.pt`
in the output folder every `checkpoint_every` steps; `--resume` continues from it, bit for bit the same
run on the same machine. The result is saved with `save_pretrained` (weight norm folded, transformers'
layout) plus `training-log.jsonl` and a loss-curve PNG.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm
from tqdm import tqdm

from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.random_init import init_weights
from xcodec_stream.model.xcodec import XcodecModel
from xcodec_stream.training.data import CropSampler
from xcodec_stream.training.discriminator import Discriminators
from xcodec_stream.training.losses import (
    MultiScaleMelLoss,
    discriminator_loss,
    feature_loss,
    generator_loss,
)
from xcodec_stream.training.recipe import TrainConfig, speech_small_config
from xcodec_stream.training.vq import EmaResidualVQ

logger = logging.getLogger(__name__)

STATE_NAME = "train-state.pt"
LOG_NAME = "training-log.jsonl"
CURVES_NAME = "training-curves.png"
SEED_LATENT_BATCHES = 16  # batches of latents the codebooks' k-means sees


def _acoustic_convs(model: XcodecModel):
    for part in (model.acoustic_encoder, model.acoustic_decoder):
        for m in part.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                yield m


class Trainer:
    def __init__(
        self,
        data: str | Path | list,
        out: str | Path,
        config: TrainConfig,
        device: str = "cpu",
        resume: bool = False,
        progress: bool = True,
        model_config: XcodecConfig | None = None,
        init_from: str | Path | None = None,
    ) -> None:
        self.cfg = config
        self.out = Path(out)
        self.device = torch.device(device)
        self.progress = progress
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.init_from = str(init_from) if init_from is not None else None
        if init_from is not None:
            model = XcodecModel.from_pretrained(init_from, dtype=torch.float32)
            if model_config is not None and model_config.to_dict() != model.config.to_dict():
                raise ValueError(f"{init_from}: its config is not the model config asked for")
            model_config = model.config
            logger.info("initialised from %s", init_from)
        else:
            model_config = model_config or speech_small_config()  # another shape: for tests
            model = XcodecModel(model_config)
            init_weights(model, torch.Generator().manual_seed(config.seed))
            model.quantizer.embed.zero_()
        # The semantic model stays frozen at its seeded initialisation; everything else learns.
        model.requires_grad_(True)
        model.semantic_model.requires_grad_(False)
        # DAC trains its convolutions with weight norm (steadier under the adversarial loss); it is folded
        # back into plain weights before saving. Applied after loading: weight_norm sets v = w and
        # g = ||w|| per output channel, so an `init_from` model starts with the checkpoint's own weights.
        for conv in _acoustic_convs(model):
            weight_norm(conv, dim=1 if isinstance(conv, nn.ConvTranspose1d) else 0)
        self.model = model.to(self.device).train()
        self.vq = EmaResidualVQ(
            self.model.quantizer.embed, config.ema_decay, config.dead_code_threshold, config.seed
        ).to(self.device)
        if init_from is not None:
            self.vq.seeded.fill_(True)  # trained codebooks: EMA statistics start at them, no k-means
        self.disc = Discriminators().to(self.device).train()
        self.mel = MultiScaleMelLoss(model_config.sample_rate).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt_g = torch.optim.AdamW(params, lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=config.lr, betas=config.betas)
        self.hop = model_config.hop_length
        segment = int(round(config.segment_seconds * model_config.sample_rate / self.hop)) * self.hop
        self.data = CropSampler(data, segment, model_config.sample_rate, config.min_rms, config.seed)
        self.step = 0
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and (self.out / STATE_NAME).is_file():
            self._load_state(self.out / STATE_NAME)
            logger.info("resumed from step %d", self.step)

    # ---- schedule -------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        floor = cfg.final_lr_fraction
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    def num_quantizers_at(self) -> int:
        q = self.model.config.num_quantizers
        if random.random() < self.cfg.quantizer_dropout:
            return random.randint(1, q)
        return q

    # ---- one step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def seed_codebooks(self) -> None:
        latents = []
        for _ in range(SEED_LATENT_BATCHES):
            z = self.model.latent(self.data.batch(self.cfg.batch_size).to(self.device))
            latents.append(z.transpose(1, 2).reshape(-1, z.shape[1]))
        self.vq.seed_codebooks(torch.cat(latents))

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(step)
        if step >= cfg.vq_start and not bool(self.vq.seeded):
            self.seed_codebooks()
        x = self.data.batch(cfg.batch_size).to(self.device)
        z = self.model.latent(x)  # the frozen semantic model builds no graph: nothing of it requires grad
        record: dict = {"step": step, "lr": self.lr_at(step)}
        if step >= cfg.vq_start:
            n_q = self.num_quantizers_at()
            zq, commit, codes = self.vq(z, n_q)
            record.update(n_q=n_q, usage=round(self.vq.usage(codes), 4))
        else:
            zq, commit = z, z.new_zeros(())
        y = self.model.decode_latent(zq)
        gan = step >= cfg.gan_start
        if step >= cfg.gan_start - cfg.disc_warmup:
            real_scores, real_features = self.disc(x)
            # feature matching reuses these real features (from before this update): one pass fewer
            real_features = [[f.detach() for f in maps] for maps in real_features]
            fake_scores, _ = self.disc(y.detach())
            d_loss = discriminator_loss(real_scores, fake_scores)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            self.opt_d.step()
            record["disc"] = float(d_loss.detach())
        mel = self.mel(y, x)
        wave = F.l1_loss(y, x)
        loss = cfg.mel_weight * mel + cfg.waveform_weight * wave + cfg.commitment_weight * commit
        if gan:
            fake_scores, fake_features = self.disc(y)
            adv = generator_loss(fake_scores)
            fm = feature_loss(real_features, fake_features)
            loss = loss + cfg.adversarial_weight * adv + cfg.feature_weight * fm
            record.update(adv=adv.item(), feat=fm.item())  # .item(): no warning about grad-tracking scalars
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        grad = nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip
        )
        self.opt_g.step()
        record.update(mel=float(mel.detach()), wave=float(wave.detach()), commit=float(commit.detach()))
        record["grad"] = float(grad)
        self.step += 1
        return record

    # ---- the run --------------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> Path | None:
        """Train to `cfg.steps` and export the checkpoint; with `stop_at`, pause after that step (state saved,
        no export) as an interruption would: `--resume` continues the same run."""
        cfg = self.cfg
        stop = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True
        )
        started = time.monotonic()
        with open(self.out / LOG_NAME, "a", buffering=1) as log_file:  # line-buffered: tail -f works
            while self.step < stop:
                record = self.train_step()
                record["elapsed_s"] = round(time.monotonic() - started, 1)
                log_file.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(
                    {k: f"{record[k]:.3g}" for k in ("mel", "wave", "commit", "adv", "usage") if k in record}
                )
                if self.step % cfg.checkpoint_every == 0 or self.step == stop:
                    log_file.flush()
                    self._save_state(self.out / STATE_NAME)
        bar.close()
        if self.step < cfg.steps:
            return None
        self.write_curves()
        return self.export()

    def write_curves(self) -> None:
        from xcodec_stream.training.curves import plot_curves, read_log

        try:
            plot_curves(
                read_log(self.out / LOG_NAME),
                self.out / CURVES_NAME,
                f"xcodec-stream train: {self.cfg.steps} steps, batch {self.cfg.batch_size} x "
                f"{self.cfg.segment_seconds} s",
                self.cfg.vq_start,
                self.cfg.gan_start,
            )
        except RuntimeError as exc:  # no matplotlib: the log is still there to plot later
            logger.warning("no training-curve plot: %s", exc)

    def export(self) -> Path:
        """The trained model as a checkpoint folder (config.json, model.safetensors, preprocessor_config.json)."""
        model = XcodecModel(self.model.config)
        state = {}
        for key, value in self.model.state_dict().items():
            if ".parametrizations.weight.original" in key:
                continue
            state[key] = value
        folded = _folded_state(self.model)
        state.update(folded)
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=True)
        model.save_pretrained(self.out)
        return self.out

    # ---- state ----------------------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        state = {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "init_from": self.init_from,
            "model": self.model.state_dict(),
            "vq": self.vq.state_dict(),
            "vq_gen": self.vq.gen.get_state(),
            "disc": self.disc.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "data": self.data.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a crash while writing leaves the previous checkpoint intact

    def _load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.vq.load_state_dict(state["vq"])
        self.vq.gen.set_state(state["vq_gen"])
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.data.load_state_dict(state["data"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])


def _folded_state(model: XcodecModel) -> dict[str, torch.Tensor]:
    """Plain `weight` tensors of the weight-normed convolutions (g * v / ||v||), under the plain keys."""
    out = {}
    names = {id(m): n for n, m in model.named_modules()}
    for conv in _acoustic_convs(model):
        if parametrize.is_parametrized(conv, "weight"):
            out[names[id(conv)] + ".weight"] = conv.weight.detach().clone()
    return out
