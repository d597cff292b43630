"""The gated PixelCNN prior: causality of every stack and layer type, the exact fast sampler, sampling rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import sampling_rule
from trainer.stage2.pixelcnn import GatedPixelCNN, sample
from trainer.stage2.prior_contract import PriorShape, draw

SHAPE = PriorShape(num_codes=16, height=9, width=8, num_conditions=4)


def tiny_prior(shape: PriorShape = SHAPE, layers: int = 3, seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(shape, channels=8, layers=layers, kernel=3, first_kernel=5, head_channels=16).double().eval()


def input_gradient(
    prior: GatedPixelCNN,
    codes: torch.Tensor,
    condition,
    cell: tuple[int, int],
    upto: int | None = None,
    stack: str = "both",
) -> torch.Tensor:
    """|d logits(cell) / d embedded input| summed over channels: (H, W), nonzero where the cell looks.
    `upto` stops after that many layers; `stack` picks which stack's output to differentiate."""
    x = prior.embed(codes).permute(0, 3, 1, 2).detach().requires_grad_()
    v = h = x
    for layer in prior.layers[:upto]:
        v_bias, h_bias = layer.condition_bias(condition)
        v, from_vertical = layer.vertical_step(v, v_bias)
        h = layer.horizontal_step(h, from_vertical, h_bias)
    out = {"both": prior.head(h) if upto is None else h, "vertical": from_vertical}[stack]
    out[0, :, cell[0], cell[1]].sum().backward()
    return x.grad[0].abs().sum(0)


@pytest.mark.parametrize("upto", [1, 2, None], ids=["type-A-layer", "type-B-layer", "whole-network"])
@pytest.mark.parametrize("cell", [(0, 0), (4, 3), (8, 7), (4, 0), (0, 7)])
def test_logits_never_see_the_cell_itself_or_later_cells(cell, upto):
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 9, 8))
    seen = input_gradient(prior, codes, torch.tensor([1]), cell, upto) > 0
    i, j = cell
    later = torch.zeros(9, 8, dtype=torch.bool)
    later[i, j:] = True
    later[i + 1 :] = True
    assert not seen[later].any(), f"cell {cell} sees itself or later cells:\n{seen.int()}"
    if (i, j) != (0, 0):
        assert seen.any()


def test_vertical_stack_only_sees_rows_above():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 9, 8))
    for upto in (1, 3):
        seen = input_gradient(prior, codes, torch.tensor([0]), (5, 4), upto, stack="vertical") > 0
        assert not seen[5:].any() and seen[:5].any()


def test_no_blind_spot_within_the_receptive_field():
    """Every earlier cell within reach (rows above within context_rows, columns within the kernels'
    reach, the whole left part of the row) influences the logits: the gated design's point."""
    prior = tiny_prior(PriorShape(16, 12, 12, 0), layers=4)
    codes = torch.randint(0, 16, (1, 12, 12))
    seen = input_gradient(prior, codes, None, (10, 6), None) > 0
    assert seen[10, :6].all()  # the whole row to the left
    assert seen[9, 6:9].all() and seen[9, 3:6].all()  # the row above, including up-right (blind spot in PixelCNN v1)
    assert seen[10 - (prior.context_rows - 1), 6]  # the farthest row that can reach it


def test_perturbing_a_cell_changes_only_later_logits():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 9, 8))
    condition = torch.tensor([0, 3])
    changed = codes.clone()
    changed[:, 4, 3] = (changed[:, 4, 3] + 5) % 16
    diff = (prior(codes, condition) - prior(changed, condition)).abs().amax(dim=(0, 1))
    flat = diff.flatten()
    position = 4 * 8 + 3
    assert flat[: position + 1].max() == 0
    assert flat[position + 1 :].max() > 0


def test_fast_path_matches_the_full_forward_at_every_cell():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (3, 9, 8))
    condition = torch.tensor([0, 2, 3])
    full = prior(codes, condition)
    for i in range(9):
        band = codes[:, max(0, i - prior.context_rows) : i + 1].clone()
        band[:, -1] = 7  # the row being sampled is never read
        context = prior.row_context(band, condition)
        for j in range(8):
            start = max(0, j - prior.context_columns)
            row = codes[:, i, start : j + 1].clone()
            row[:, -1] = 11  # nor is the cell itself
            logits = prior.cell_logits(row, context[..., start : j + 1], condition)
            torch.testing.assert_close(logits, full[:, :, i, j], rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 5)])
@pytest.mark.parametrize("conditional", [True, False])
def test_fast_and_naive_samplers_give_identical_samples(conditional, temperature, top_k):
    shape = PriorShape(16, 9, 8, 4 if conditional else 0)
    prior = tiny_prior(shape).float()
    uniforms = torch.rand(3, 9, 8, generator=torch.Generator().manual_seed(1))
    condition = torch.tensor([0, 1, 3]) if conditional else None
    fast = sample(prior, uniforms, condition, temperature, top_k)
    naive = sample(prior, uniforms, condition, temperature, top_k, naive=True)
    assert torch.equal(fast, naive)
    assert fast.shape == (3, 9, 8) and fast.min() >= 0 and fast.max() < 16


def test_sampling_is_reproducible_and_conditioning_changes_it():
    prior = tiny_prior().float()
    uniforms, _ = sampling_rule.sampling_randomness(4, 9, 8, 4, seed=3)
    u = torch.from_numpy(uniforms)
    first = sample(prior, u, torch.tensor([0, 0, 0, 0]))
    assert torch.equal(first, sample(prior, u, torch.tensor([0, 0, 0, 0])))
    assert not torch.equal(first, sample(prior, u, torch.tensor([3, 3, 3, 3])))
    logits = prior(first, torch.tensor([0, 0, 0, 0]))
    assert not torch.allclose(logits, prior(first, torch.tensor([2, 2, 2, 2])))
    other, _ = sampling_rule.sampling_randomness(4, 9, 8, 4, seed=4)
    assert not np.array_equal(uniforms, other)


def test_a_sample_does_not_depend_on_how_many_are_drawn():
    few = sampling_rule.sampling_randomness(2, 9, 8, 4, seed=7)
    many = sampling_rule.sampling_randomness(5, 9, 8, 4, seed=7)
    assert np.array_equal(few[0], many[0][:2]) and np.array_equal(few[1], many[1][:2])
    assert not np.array_equal(many[0][0], many[0][1])
    uniforms, conditions = sampling_rule.sampling_randomness(3, 9, 8, 4, seed=7, slice_index=2)
    assert list(conditions) == [2, 2, 2] and 0 <= uniforms.min() and uniforms.max() < 1


def test_torch_and_numpy_draw_rules_agree():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 16, generator=generator) * 3
    uniforms = torch.rand(500, generator=generator)
    for temperature, top_k in [(1.0, 0), (0.5, 0), (1.3, 3), (1.0, 1)]:
        ours = draw(logits, uniforms, temperature, top_k).numpy()
        theirs = sampling_rule.draw(logits.numpy(), uniforms.numpy(), temperature, top_k)
        assert np.array_equal(ours, theirs)
    assert np.array_equal(draw(logits, uniforms, 1.0, 1).numpy(), logits.argmax(1).numpy())  # top-1 is greedy


def test_draw_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).repeat(20000, 1)
    uniforms = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draw(logits, uniforms), minlength=3) / 20000
    torch.testing.assert_close(frequencies, torch.tensor([0.1, 0.6, 0.3]), atol=0.015, rtol=0)
    assert set(draw(logits, uniforms, top_k=2).tolist()) == {1, 2}


def test_bad_sampling_options_are_refused():
    prior = tiny_prior().float()
    u = torch.rand(2, 9, 8)
    with pytest.raises(ValueError, match="temperature"):
        sample(prior, u, torch.tensor([0, 1]), temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        sample(prior, u, torch.tensor([0, 1]), top_k=17)
    with pytest.raises(ValueError, match="conditional"):
        sample(prior, u, None)
    with pytest.raises(ValueError, match="slice"):
        sampling_rule.sampling_randomness(2, 9, 8, 4, seed=0, slice_index=4)
    with pytest.raises(ValueError, match="without slice conditioning"):
        sampling_rule.sampling_randomness(2, 9, 8, 0, seed=0, slice_index=1)


def test_loss_falls_on_a_tiny_code_set():
    torch.manual_seed(0)
    shape = PriorShape(8, 6, 6, 2)
    prior = GatedPixelCNN(shape, channels=16, layers=3, kernel=3, first_kernel=3, head_channels=32)
    # structured grids: stripes whose phase depends on the condition, so both stacks have something to learn
    rows = torch.arange(6)[:, None] + torch.arange(6)[None, :]
    codes = torch.stack([(rows + c) % 8 for c in (0, 3)] * 4)
    condition = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(prior(codes, condition), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]
