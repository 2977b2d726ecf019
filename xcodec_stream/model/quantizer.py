"""Residual vector quantizer of X-Codec: nearest codebook vector by Euclidean distance, no projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.layers import derived


class ResidualVectorQuantizer(nn.Module):
    """`num_quantizers` codebooks of `codebook_size` vectors of `dim`, stored as one buffer `embed` (Q, K, D).

    Checkpoints keep them as `quantizer.quantizers.{i}.codebook.embed`; the loader stacks them.
    """

    def __init__(self, num_quantizers: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.dim = dim
        self.register_buffer("embed", torch.zeros(num_quantizers, codebook_size, dim))
        self._norm_cache: dict = {}  # codebook norms (`derived`)

    def nearest(self, x: torch.Tensor, q: int) -> torch.Tensor:
        """Index of the nearest vector of codebook `q` for each row of x (N, D).

        The distance is written exactly as transformers writes it (same ops, same order), so that near-ties
        resolve the same way and codes are identical. Half-precision inputs are compared in float32.
        """
        embed = self.embed[q]
        if x.dtype in (torch.float16, torch.bfloat16):
            x, embed = x.float(), embed.float()
        embed_t = embed.t()
        scaled = x.pow(2).sum(1, keepdim=True)
        # transformers: -(scaled - 2 * x @ embed_t + norms).max(-1). The same roundings in place: negation is
        # exact and a + b == b + a, so -mm + scaled is scaled - mm bit for bit, and the argmin of d is the
        # argmax of -d (the first of equal values either way): two passes fewer over (N, codebook_size).
        dist = (2 * x @ embed_t).neg_().add_(scaled).add_(self._norms(q, embed_t.dtype))
        return dist.min(dim=-1).indices

    def _norms(self, q: int, dtype: torch.dtype) -> torch.Tensor:
        """`embed[q].to(dtype).t().pow(2).sum(0, keepdim=True)`, computed once per codebook: reading every
        codebook twice per call was most of a streaming step's VQ time."""
        return derived(
            self._norm_cache, (q, dtype), self.embed[q], lambda e: e.to(dtype).t().pow(2).sum(0, keepdim=True)
        )

    def prepare(self) -> None:
        """Compute every codebook's norms now (before a compiled step reads them), in the dtype `nearest`
        compares in."""
        half = self.embed.dtype in (torch.float16, torch.bfloat16)
        for q in range(self.num_quantizers):
            self._norms(q, torch.float32 if half else self.embed.dtype)

    def quantize(self, embeddings: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """(B, D, F) latent -> (B, n_q, F) int64 codes, each quantizer coding the residual of the previous ones."""
        if not 1 <= num_quantizers <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be in 1..{self.num_quantizers}, got {num_quantizers}")
        b, d, f = embeddings.shape
        residual = embeddings.transpose(1, 2).reshape(b * f, d)
        codes = []
        for q in range(num_quantizers):
            idx = self.nearest(residual, q)
            residual = residual - F.embedding(idx, self.embed[q]).to(residual.dtype)
            codes.append(idx)
        return torch.stack(codes, dim=0).view(num_quantizers, b, f).transpose(0, 1).contiguous()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_q, F) codes -> (B, D, F): the sum of the chosen vectors of the first n_q codebooks.

        Codes are not range-checked here (no device sync): `XcodecModel.decode` checks them.
        """
        if codes.dim() != 3:
            raise ValueError(
                f"codes must have shape (batch, num_quantizers, frames), got {tuple(codes.shape)}"
            )
        n_q = codes.shape[1]
        if n_q > self.num_quantizers:
            raise ValueError(f"codes have {n_q} quantizers, this model has {self.num_quantizers}")
        codes = codes.to(self.embed.device)
        out = torch.full((), 0.0, device=codes.device, dtype=self.embed.dtype)
        for q in range(n_q):
            out = out + F.embedding(codes[:, q], self.embed[q])
        if n_q == 0:
            out = out.expand(codes.shape[0], codes.shape[2], self.dim)
        return out.transpose(1, 2)
