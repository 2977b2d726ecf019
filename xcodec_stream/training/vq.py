"""Training the residual VQ: codebooks updated by exponential moving averages (as X-Codec and EnCodec
train them), seeded by k-means, with dead codes re-seeded from the batch.

The codebooks trained are the model's own `quantizer.embed` buffer, so the model that is saved is the
model that was trained; this module holds only the EMA statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N,) index of the nearest codebook vector (Euclidean). Not the model quantizer's
    `nearest`: that one caches codebook norms per storage, and training changes the codebooks in place."""
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None]
    return dist.argmin(dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k centroids of the rows of x (N, D); fewer rows than k are drawn with replacement (plus jitter)."""
    n = x.shape[0]
    idx = torch.randint(0, n, (k,), generator=gen, device="cpu").to(x.device)
    centroids = x[idx].clone()
    centroids += 1e-3 * x.std() * torch.randn(centroids.shape, generator=gen, device="cpu").to(x.device)
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        used = counts > 0
        centroids[used] = sums[used] / counts[used, None]
    return centroids


class EmaResidualVQ(nn.Module):
    """Quantizes (B, D, F) latents with the first `n_q` codebooks of `embed` (Q, K, D) and, in training,
    moves each codebook towards the mean of the residuals assigned to each of its codes.

    Returns the straight-through quantized latent (gradients pass to the encoder as if unquantized) and
    the commitment loss (each stage's input residual against its chosen code).
    """

    def __init__(self, embed: torch.Tensor, decay: float, dead_threshold: float, seed: int) -> None:
        super().__init__()
        self.embed = embed  # the model's buffer, updated in place
        q, k, _ = embed.shape
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.register_buffer("cluster_size", torch.ones(q, k, device=embed.device))
        self.register_buffer("embed_avg", embed.detach().clone())
        self.register_buffer("seeded", torch.zeros((), dtype=torch.bool, device=embed.device))
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def seed_codebooks(self, latents: torch.Tensor, iters: int = 10) -> None:
        """k-means of each stage's residual over `latents` (N, D): the codebooks start where the data is."""
        residual = latents.float()
        for q in range(self.embed.shape[0]):
            centroids = kmeans(residual, self.embed.shape[1], iters, self.gen)
            self.embed[q].copy_(centroids)
            self.embed_avg[q].copy_(centroids)
            self.cluster_size[q].fill_(1.0)
            residual = residual - centroids[_nearest(residual, centroids)]
        self.seeded.fill_(True)

    def forward(self, z: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, F), n_q -> quantized (B, D, F), commitment loss (scalar), codes (B, n_q, F)."""
        b, d, f = z.shape
        x = z.transpose(1, 2).reshape(b * f, d)
        residual = x
        total = torch.zeros_like(x)
        commit = x.new_zeros(())
        codes = []
        for q in range(n_q):
            embed = self.embed[q]
            idx = _nearest(residual.detach(), embed)
            chosen = F.embedding(idx, embed)
            commit = commit + F.mse_loss(residual, chosen)
            if self.training:
                self._update(q, residual.detach(), idx)
            total = total + chosen
            residual = residual - chosen
            codes.append(idx.view(b, f))
        quantized = x + (total - x).detach()
        return quantized.view(b, f, d).transpose(1, 2), commit, torch.stack(codes, dim=1)

    @torch.no_grad()
    def _update(self, q: int, x: torch.Tensor, idx: torch.Tensor) -> None:
        k = self.embed.shape[1]
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(self.embed_avg[q]).index_add_(0, idx, x)
        self.cluster_size[q].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg[q].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        size = self.cluster_size[q]
        n = size.sum()
        smoothed = (size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by zero
        self.embed[q].copy_(self.embed_avg[q] / smoothed[:, None])
        dead = size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            # a code nobody uses is wasted bandwidth: move it onto a random residual of this batch
            pick = torch.randint(0, x.shape[0], (n_dead,), generator=self.gen).to(x.device)
            self.embed[q][dead] = x[pick]
            self.embed_avg[q][dead] = x[pick] * self.dead_threshold
            self.cluster_size[q][dead] = self.dead_threshold

    def usage(self, codes: torch.Tensor) -> float:
        """Mean fraction of each codebook's codes used in `codes` (B, n_q, F): a health figure for the log."""
        k = self.embed.shape[1]
        used = [torch.unique(codes[:, i]).numel() / k for i in range(codes.shape[1])]
        return sum(used) / len(used)
