"""Tests for trainer/stage1/quantizer.py: nearest-code search, straight-through gradients, EMA
arithmetic, dead-code restarts and multi-process consistency (CPU, gloo)."""

import contextlib
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import trainer.stage1.quantizer as quantizer
from trainer.stage1.quantizer import VectorQuantizer, codebook_stats, naive_nearest_code, nearest_code


def assert_nearest(z: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> None:
    """indices equal the float64 brute force except where two codes are tied to 1e-5 (relative)."""
    dist64 = torch.cdist(z.double(), codebook.double())
    best = dist64.min(1).values
    chosen = dist64.gather(1, indices[:, None]).squeeze(1)
    wrong = indices != dist64.argmin(1)
    rel_gap = (chosen - best)[wrong] / best[wrong]
    assert (rel_gap < 1e-5).all(), f"{int(wrong.sum())} wrong codes, worst relative gap {rel_gap.max():.2e}"
    assert wrong.sum() <= 2  # near-ties are rare on random data


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_nearest_code_matches_float64(autocast):
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(5000, 64, generator=g), torch.randn(512, 64, generator=g)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        indices = nearest_code(z, codebook, chunk_size=1024)  # 4 compiled chunks + 904 rows
    assert not quantizer._compile_failed, "torch.compile failed, so only the eager fallback ran"
    assert indices.dtype == torch.int64 and indices.shape == (5000,)
    assert_nearest(z, codebook, indices)
    assert torch.equal(indices, nearest_code(z, codebook, chunk_size=1024, compile=False))
    assert_nearest(z, codebook, naive_nearest_code(z, codebook))


def test_nearest_code_falls_back_when_compile_fails(monkeypatch):
    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(quantizer, "_compiled_argmin_distance", lambda: broken)
    monkeypatch.setattr(quantizer, "_compile_failed", False)
    z, codebook = torch.randn(300, 8), torch.randn(16, 8)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        indices = nearest_code(z, codebook, chunk_size=100)
    assert quantizer._compile_failed
    assert torch.equal(indices, torch.cdist(z.double(), codebook.double()).argmin(1))


def test_straight_through_gradient():
    vq = VectorQuantizer(num_codes=16, code_dim=4, update="loss", compile=False)
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    out = vq(z_e)
    (out.z_q * w).sum().backward()
    assert torch.equal(z_e.grad, w)
    assert torch.allclose(out.z_q, vq.lookup(out.indices))  # forward value is the code


def test_loss_mode_trains_codebook_by_gradient():
    vq = VectorQuantizer(num_codes=16, code_dim=4, beta=0.25, update="loss", compile=False).train()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z_e)
    out.loss.backward()
    e = vq.lookup(out.indices).detach()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    assert torch.allclose(out.codebook_loss, ((z_e.detach() - e) ** 2).mean())
    # only the commitment term reaches the encoder: d/dz_e beta * mean((z_e - e)^2)
    assert torch.allclose(z_e.grad, 0.25 * 2 * (z_e.detach() - e) / z_e.numel())


def test_ema_mode_codebook_gets_no_gradient():
    vq = VectorQuantizer(num_codes=16, code_dim=4, update="ema", compile=False).train()
    assert "codebook" not in dict(vq.named_parameters())
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z_e)
    out.loss.backward()
    assert out.codebook_loss.item() == 0.0
    assert vq.codebook.grad is None and not vq.codebook.requires_grad
    assert z_e.grad is not None


def test_ema_update_by_hand():
    vq = VectorQuantizer(num_codes=3, code_dim=2, decay=0.5, eps=0.1, dead_code_threshold=0, compile=False)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    vq.ema_cluster_size.fill_(1.0)
    vq.ema_embed_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    vectors = torch.tensor([[0.1, 0.1], [0.9, 0.1], [1.1, -0.1], [-0.2, 0.8]])  # codes 0, 1, 1, 2
    z_e = vectors.T.reshape(1, 2, 2, 2)  # pixel (h, w) holds vectors[2 * h + w]

    out = vq.train()(z_e)

    assert out.indices.tolist() == [[[0, 1], [1, 2]]]
    old = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(out.z_q, old.T.reshape(1, 2, 2, 2))  # quantised with the old codebook
    assert math.isclose(out.commitment_loss.item(), ((vectors - old) ** 2).mean().item(), rel_tol=1e-6)
    # counts (1, 2, 1); sums (0.1, 0.1), (2.0, 0.0), (-0.2, 0.8); new = 0.5 * old + 0.5 * batch
    sizes = [1.0, 1.5, 1.0]
    sums = [[0.05, 0.05], [1.5, 0.0], [-0.1, 0.9]]
    n = 3.5
    smoothed = [(s + 0.1) / (n + 3 * 0.1) * n for s in sizes]  # Laplace, eps large enough to matter
    codebook = [[x / smoothed[k] for x in sums[k]] for k in range(3)]
    assert torch.allclose(vq.ema_cluster_size, torch.tensor(sizes))
    assert torch.allclose(vq.ema_embed_sum, torch.tensor(sums))
    assert torch.allclose(vq.codebook, torch.tensor(codebook))
    assert int(vq.step) == 1


def test_codebook_initialised_from_first_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, code_dim=3, decay=0.9, dead_code_threshold=0.5, compile=False).train()
    z_e = torch.randn(2, 3, 4, 4)
    out = vq(z_e)  # quantises with the fresh codebook, then takes one EMA step
    assert bool(vq.initialized)
    # the 8 codes are 8 distinct input rows: exactly those rows quantise to themselves
    exact = (out.z_q == z_e).all(1)
    assert int(exact.sum()) == 8
    assert sorted(out.indices[exact].tolist()) == list(range(8))
    # usage starts at the restart threshold, then one EMA step with this batch's counts
    counts = torch.bincount(out.indices.flatten(), minlength=8).float()
    assert torch.allclose(vq.ema_cluster_size, 0.9 * 0.5 + 0.1 * counts)


def test_dead_codes_are_restarted_on_data():
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(num_codes=4, code_dim=2, decay=0.5, dead_code_threshold=0.5, compile=False)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]))  # 2, 3 unused
    vq.ema_cluster_size.fill_(1.0)
    vq.ema_embed_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    eval_batch = 0.5 + 0.3 * torch.randn(4, 2, 8, 8, generator=g)

    def codes_used() -> int:
        return int(codebook_stats(torch.bincount(vq.eval()(eval_batch).indices.flatten(), minlength=4))[1])

    assert codes_used() == 2
    for _ in range(3):  # unused size 1 -> 0.5 -> 0.25 < 0.5: restarted on the second step
        z_e = 0.5 + 0.3 * torch.randn(4, 2, 4, 4, generator=g)
        vq.train()(z_e)
    assert int(vq.restart_count) == 2
    for _ in range(20):
        vq.train()(0.5 + 0.3 * torch.randn(4, 2, 4, 4, generator=g))
    assert vq.codebook.abs().max() < 3  # every code now lives near the data
    assert codes_used() > 2


def test_restart_takes_input_vectors():
    vq = VectorQuantizer(num_codes=4, code_dim=2, decay=0.5, dead_code_threshold=0.9, compile=False)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]))
    vq.ema_cluster_size.fill_(1.0)
    vq.ema_embed_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    z_e = 0.5 + 0.3 * torch.randn(2, 2, 4, 4)
    vq.train()(z_e)  # unused codes: size 1 -> 0.5 < 0.9, restarted now
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = vq.codebook[2:]
    assert int(vq.restart_count) == 2
    assert all((rows == code).all(1).any() for code in restarted)
    assert torch.equal(vq.ema_cluster_size[2:], torch.full((2,), 0.9))
    assert torch.allclose(vq.ema_embed_sum[2:], restarted * 0.9)


def test_state_dict_resumes_exactly():
    torch.manual_seed(0)
    batches = [torch.randn(2, 4, 4, 4) for _ in range(4)]
    vq = VectorQuantizer(num_codes=16, code_dim=4, decay=0.5, dead_code_threshold=2.0, compile=False).train()
    for b in batches[:3]:
        vq(b)
    assert {"codebook", "ema_cluster_size", "ema_embed_sum", "initialized", "step", "restart_count"} <= set(
        vq.state_dict()
    )
    resumed = VectorQuantizer(num_codes=16, code_dim=4, decay=0.5, dead_code_threshold=2.0, compile=False).train()
    resumed.load_state_dict(vq.state_dict())
    vq(batches[3]), resumed(batches[3])
    for key, value in vq.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_codebook_stats():
    perplexity, used = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert math.isclose(perplexity.item(), 2.0, rel_tol=1e-6) and used.item() == 2
    perplexity, used = codebook_stats(torch.tensor([3, 0, 0]))
    assert math.isclose(perplexity.item(), 1.0, rel_tol=1e-6) and used.item() == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_codes": 0}, "num_codes"),
        ({"code_dim": -1}, "code_dim"),
        ({"beta": -0.1}, "beta"),
        ({"update": "kmeans"}, "update must be 'ema' or 'loss'"),
        ({"decay": 1.0}, "decay"),
        ({"eps": 0.0}, "eps"),
        ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VectorQuantizer(**kwargs)


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"expected z_e of shape \(B, 4, H, W\)"):
        VectorQuantizer(num_codes=8, code_dim=4, compile=False)(torch.randn(2, 3, 4, 4))


# --------------------------------------------------------------------------- distributed


def _global_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 4, 2, 2, generator=g) for _ in range(8)]


def _train_ema(batches: list[torch.Tensor]) -> VectorQuantizer:
    # 16 rows a step, 8 codes: initial usage 2, an unused code drops below 1.5 after two steps
    vq = VectorQuantizer(num_codes=8, code_dim=4, decay=0.8, dead_code_threshold=1.5, compile=False).train()
    for batch in batches:
        vq(batch)
    return vq


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # uneven split: rank 0 sees image 0, rank 1 images 1-3
        vq = _train_ema([b[:1] if rank == 0 else b[1:] for b in _global_batches()])
        torch.save(vq.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_stay_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    single = _train_ema(_global_batches()).state_dict()

    assert int(rank0["restart_count"]) > 0  # restarts happened during the run
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.allclose(rank0[key].double(), single[key].double(), atol=1e-6), key
