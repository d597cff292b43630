"""Vector quantisation for the VQ-VAE bottleneck (van den Oord et al., 2017).

Two pieces live here:

* `nearest_code`: the index of the closest codebook vector for every encoder output. It is
  the hot loop of the quantiser, so it is chunked (memory stays at chunk_size x K instead of
  N x K) and compiled (the matmul writes the distances of a chunk into one buffer, and one
  fused kernel reduces it to the argmin).
* `VectorQuantizer`: the nn.Module with the straight-through estimator, the commitment loss,
  and two ways of learning the codebook: by gradient ("loss", as in the paper) or by
  exponential moving averages of the assigned encoder outputs ("ema", the paper's appendix),
  with dead-code restarts. EMA statistics are all-reduced so every process keeps the same
  codebook under torch.distributed / Accelerate. Options from ViT-VQGAN (Yu et al. 2022): a
  lower-dimensional codebook behind 1x1 projections (`codebook_dim`) and l2-normalised codes with
  cosine nearest-code search (`cosine`).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from common.code_usage import perplexity

__all__ = [
    "QuantizerOutput",
    "VectorQuantizer",
    "codebook_stats",
    "naive_nearest_code",
    "nearest_code",
]


# --------------------------------------------------------------------------- nearest code


def argmin_distance(z: Tensor, codebook: Tensor, code_sq_norms: Tensor) -> Tensor:
    """argmin_k ||z - c_k||^2 per row; ||z||^2 is the same for every k, so it is dropped."""
    # addmm computes ||c_k||^2 - 2 z.c_k into one buffer, also when run eagerly.
    return torch.addmm(code_sq_norms, z, codebook.T, alpha=-2.0).argmin(1)


@functools.cache
def _compiled_argmin_distance():
    # dynamic=False: one specialised kernel per (chunk_size, K, D); nearest_code only ever
    # feeds it full chunks, so batch sizes do not trigger recompiles.
    return torch.compile(argmin_distance, dynamic=False)


_compile_failed = False  # set once compilation has failed; later calls stay eager


def _argmin_chunk(z: Tensor, codebook: Tensor, code_sq_norms: Tensor, compile: bool) -> Tensor:
    global _compile_failed
    # Inside an outer torch.compile / torch.export the outer compiler does the fusing.
    if compile and not _compile_failed and not torch.compiler.is_compiling():
        try:
            return _compiled_argmin_distance()(z, codebook, code_sq_norms)
        except Exception as err:  # e.g. no C++ compiler; correctness must not depend on it
            _compile_failed = True
            warnings.warn(f"nearest_code: torch.compile failed ({err!r}); running eagerly.")
    return argmin_distance(z, codebook, code_sq_norms)


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, chunk_size: int = 4096, compile: bool = True) -> Tensor:
    """Index (int64, shape N) of the nearest codebook row (K, D) for each row of z (N, D).

    Works on row chunks so the extra memory is about chunk_size x K floats rather than the
    full N x K distance matrix. Full chunks run the compiled kernel; the final partial chunk
    runs eagerly so that odd N never causes a recompile. Always float32, even under autocast:
    bf16 distances would pick the wrong code for close pairs.
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected z (N, D) and codebook (K, D), got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, codebook = z.float(), codebook.float().contiguous()
        code_sq_norms = (codebook * codebook).sum(1)
        indices = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, z.shape[0], chunk_size):
            chunk = z[start : start + chunk_size].contiguous()
            full = chunk.shape[0] == chunk_size
            indices[start : start + chunk.shape[0]] = _argmin_chunk(chunk, codebook, code_sq_norms, compile and full)
    return indices


@torch.no_grad()
def naive_nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Baseline: the full N x K distance matrix, then argmin (what nearest_code avoids)."""
    return torch.cdist(z.float(), codebook.float()).argmin(1)


# --------------------------------------------------------------------------- quantiser


class QuantizerOutput(NamedTuple):
    z_q: Tensor  # (B, D, H, W) quantised latents, straight-through gradient to z_e
    indices: Tensor  # (B, H, W) int64 code indices
    loss: Tensor  # beta * commitment_loss + codebook_loss, add this to the training loss
    commitment_loss: Tensor  # ||z_e - sg[e]||^2 (mean)
    codebook_loss: Tensor  # ||sg[z_e] - e||^2 (mean) for update="loss"; 0 for "ema"
    perplexity: Tensor  # exp(entropy of code usage) in this batch, on this process


def codebook_stats(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(perplexity, number of codes used) from per-code counts (K,).

    Accumulate `torch.bincount(indices.flatten(), minlength=K)` over an evaluation pass and
    call this once, to report usage over the whole pass rather than an average of batches.
    """
    return perplexity(counts, xp=torch), (counts > 0).sum()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """Maps encoder outputs (B, D, H, W) to their nearest codebook vectors.

    update="loss": the codebook is an nn.Parameter trained by the codebook loss (paper, eq. 3).
    update="ema":  the codebook is a buffer set to the running mean of the encoder outputs
                   assigned to each code; codes whose EMA usage (`ema_cluster_size`, in
                   vectors per step over all processes) falls below `dead_code_threshold`
                   are restarted on current encoder outputs and counted in `restart_count`.
                   A fair share is B*H*W*world_size / num_codes per step; keep the
                   threshold well below it or codes are re-drawn over and over.
    In both modes the codebook is initialised from the first training batch (random encoder
    outputs), which avoids most dead codes at the start; before that it holds the paper's
    uniform(-1/K, 1/K) values.

    Random choices (initialisation, restarts) index the concatenation of all processes'
    batches with keys hashed from the step counter (a buffer), so every process picks the same
    vectors and a checkpoint resumes exactly. All state is in buffers, hence in state_dict.
    A training step never waits on the host (no `.item()`, no data-dependent shapes), so it
    compiles into one graph and the GPU is never stalled by it.
    """

    def __init__(
        self,
        num_codes: int = 512,
        code_dim: int = 64,
        beta: float = 0.25,
        update: str = "ema",
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        compile: bool = True,
        codebook_dim: int = 0,
        cosine: bool = False,
    ):
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"num_codes and code_dim must be >= 1, got {num_codes} and {code_dim}")
        if beta < 0:
            raise ValueError(f"beta (commitment weight) must be >= 0, got {beta}")
        if update not in ("ema", "loss"):
            raise ValueError(f"update must be 'ema' or 'loss', got {update!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if eps <= 0:
            raise ValueError(f"eps (Laplace smoothing) must be > 0, got {eps}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0 (0 disables restarts), got {dead_code_threshold}")
        if codebook_dim < 0:
            raise ValueError(f"codebook_dim must be >= 0, got {codebook_dim}")
        self.num_codes, self.code_dim, self.beta, self.update = num_codes, code_dim, beta, update
        self.decay, self.eps, self.dead_code_threshold, self.compile = decay, eps, dead_code_threshold, compile
        self.codebook_dim, self.cosine = codebook_dim or code_dim, cosine
        # Codes live in a space of codebook_dim; 1x1 projections map the encoder's D there and back.
        # Identity when the two agree: no parameters, so older checkpoints load unchanged.
        projected = self.codebook_dim != code_dim
        self.project_in = nn.Conv2d(code_dim, self.codebook_dim, 1) if projected else nn.Identity()
        self.project_out = nn.Conv2d(self.codebook_dim, code_dim, 1) if projected else nn.Identity()

        codebook = torch.empty(num_codes, self.codebook_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if update == "loss":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_cluster_size", torch.zeros(num_codes))
            self.register_buffer("ema_embed_sum", torch.zeros(num_codes, self.codebook_dim))
            self.register_buffer("restart_count", torch.zeros((), dtype=torch.long))  # cumulative
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training forwards so far

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.ndim != 4 or z_e.shape[1] != self.code_dim:
            raise ValueError(f"expected z_e of shape (B, {self.code_dim}, H, W), got {tuple(z_e.shape)}")
        z = self._to_code_space(z_e)
        B, D, H, W = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, D).float()
        if self.training:
            self._init_from_data(flat)

        codebook = self.codes()
        indices = nearest_code(flat, codebook, compile=self.compile)
        e = F.embedding(indices.view(B, H, W), codebook).permute(0, 3, 1, 2)  # carries the gradient for "loss"
        commitment_loss = F.mse_loss(z.float(), e.detach())
        if self.update == "loss":
            codebook_loss = F.mse_loss(e, z.detach().float())
        else:
            codebook_loss = torch.zeros((), device=z_e.device)
        z_q = z + (e.to(z.dtype) - z).detach()  # straight-through estimator

        # scatter_add_ rather than bincount: bincount's output size depends on the data, which
        # breaks a compiled graph.
        counts = torch.zeros(self.num_codes, dtype=torch.long, device=indices.device)
        counts.scatter_add_(0, indices, torch.ones_like(indices))
        if self.training:
            if self.update == "ema":
                self._ema_update(flat, indices, counts)
            self.step += 1
        perplexity, _ = codebook_stats(counts)
        loss = self.beta * commitment_loss + codebook_loss
        return QuantizerOutput(
            self.project_out(z_q), indices.view(B, H, W), loss, commitment_loss, codebook_loss, perplexity
        )

    def codes(self) -> Tensor:
        """The codebook as searched and looked up: l2-normalised rows when `cosine` (for update="loss" the
        parameter itself is free; for "ema" it is kept normalised and this is a no-op)."""
        return F.normalize(self.codebook, dim=1) if self.cosine else self.codebook

    def _to_code_space(self, z_e: Tensor) -> Tensor:
        z = self.project_in(z_e)
        return F.normalize(z, dim=1) if self.cosine else z

    def encode_indices(self, z_e: Tensor) -> Tensor:
        """Nearest-code indices (B, H, W) for encoder outputs (B, D, H, W), without the training machinery:
        plain tensor ops on all cells at once, so the ONNX encoder exports it as it is."""
        z = self._to_code_space(z_e).permute(0, 2, 3, 1)
        codebook = self.codes()
        flat = argmin_distance(z.reshape(-1, z.shape[-1]), codebook, (codebook * codebook).sum(1))
        return flat.reshape(z.shape[:3])

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for indices (B, H, W), as the (B, D, H, W) tensor the decoder takes."""
        return self.project_out(F.embedding(indices, self.codes()).permute(0, 3, 1, 2).contiguous())

    @torch.no_grad()
    def _init_from_data(self, flat: Tensor) -> None:
        """Set the codebook to random encoder outputs on the first training step; a no-op after.

        Runs at every training step and chooses with torch.where, not with `if initialized`: a
        Python branch on a tensor would sync with the host and break a compiled graph."""
        fresh = ~self.initialized
        samples = self._sample_rows(flat, salt=0)
        self.codebook.data.copy_(torch.where(fresh, samples, self.codebook))
        if self.update == "ema":
            # Start every code's usage at the restart threshold (1 if restarts are off), not at
            # the uniform rate total / K: early on the encoder moves fast, so the EMA must follow
            # quickly (the first batches outweigh this prior), and a code that wins nothing
            # falls below the threshold at once and is restarted, instead of ~ln(total / K) /
            # (1 - decay) steps later (hundreds), by which time the codebook has collapsed.
            weight = self.dead_code_threshold or 1.0
            self.ema_cluster_size.copy_(torch.where(fresh, weight, self.ema_cluster_size))
            self.ema_embed_sum.copy_(torch.where(fresh, samples * weight, self.ema_embed_sum))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        # Everything here is float32 (flat was cast, buffers are float32) whatever autocast says.
        # index_add_ computes one_hot.T @ flat without building the N x K one-hot matrix.
        counts = _all_reduce_sum(counts.float())
        sums = _all_reduce_sum(torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat))
        self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes away from a division by zero.
        n = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        means = self.ema_embed_sum / smoothed.unsqueeze(1)
        self.codebook.copy_(F.normalize(means, dim=1) if self.cosine else means)

        # Dead codes (identical on every process) are restarted from a draw of one row per code,
        # made at every step whether or not a code died: a draw sized by the number of dead codes
        # would need that number on the host. Restarted codes get the threshold as usage: unless
        # they win vectors in the next step they fall below it again and are re-drawn.
        dead = (self.ema_cluster_size < self.dead_code_threshold).unsqueeze(1)
        samples = self._sample_rows(flat, salt=1)
        self.codebook.copy_(torch.where(dead, samples, self.codebook))
        self.ema_cluster_size.copy_(torch.where(dead[:, 0], self.dead_code_threshold, self.ema_cluster_size))
        self.ema_embed_sum.copy_(torch.where(dead, samples * self.dead_code_threshold, self.ema_embed_sum))
        self.restart_count += dead.sum()

    def _sample_rows(self, flat: Tensor, salt: int) -> Tensor:
        """num_codes rows drawn from all processes' `flat` concatenated (rank order), identical on all.

        Each row gets a random key that depends only on (step, salt, its index in the concatenation):
        a counter-based draw, so nothing is seeded from the host, and a run resumed from a checkpoint
        (which holds `step`) draws exactly what it would have. The rows with the largest keys win:
        distinct rows while there are at least num_codes of them, else every row in turn. Each
        process keeps its own best num_codes candidates; gathering those (a fixed size, however
        uneven the batches) lets every process pick the same global winners, and a single process
        fed the concatenated batch picks exactly the same rows.
        """
        n, local = self.num_codes, flat.shape[0]
        offset = torch.zeros((), dtype=torch.long, device=flat.device)
        if _distributed():
            sizes = [torch.zeros(1, dtype=torch.long, device=flat.device) for _ in range(dist.get_world_size())]
            dist.all_gather(sizes, torch.tensor([local], device=flat.device))
            offset = torch.cat(sizes)[: dist.get_rank()].sum()
        index = offset + torch.arange(local, device=flat.device)
        seed = _hash32(self.step * 2 + salt)
        keys = _hash32(index ^ seed) * 2**31 + index  # unique: the index breaks ties
        take = min(n, local)
        keys, best = keys.topk(take)
        rows = flat[best]
        if take < n:  # pad to a fixed size with keys that never win
            keys = torch.cat([keys, keys.new_full((n - take,), -1)])
            rows = torch.cat([rows, rows.new_zeros(n - take, rows.shape[1])])
        if _distributed():
            keys, rows = _all_gather_cat(keys), _all_gather_cat(rows)
        keys, best = keys.topk(n)
        valid = (keys >= 0).sum().clamp_min(1)  # rows in all batches together, if fewer than n
        return rows[best[torch.arange(n, device=flat.device) % valid]]


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensor in, int64 in [0, 2**32) out), the same on every device.

    Thomas Mueller's mixer: every intermediate stays below 2**63, so int64 arithmetic is exact."""
    mask, multiplier = 0xFFFFFFFF, 0x45D9F3B
    x = x & mask
    x = ((x ^ (x >> 16)) * multiplier) & mask
    x = ((x ^ (x >> 16)) * multiplier) & mask
    return x ^ (x >> 16)


def _all_gather_cat(t: Tensor) -> Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)
