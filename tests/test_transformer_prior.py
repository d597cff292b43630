"""The transformer prior: causality, whole-grid reach, the exact key/value-cached sampler, sampling rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common import sampling_rule
from common.kv_cache import write_cache
from trainer.stage2.pixelcnn import sample as pixelcnn_sample
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.transformer_prior import TransformerPrior, sample

SHAPE = PriorShape(num_codes=16, height=6, width=5, num_conditions=4)


def tiny_prior(shape: PriorShape = SHAPE, kv_heads: int = 2, seed: int = 0) -> TransformerPrior:
    torch.manual_seed(seed)
    prior = TransformerPrior(shape, layers=2, width=16, heads=4, kv_heads=kv_heads, mlp_ratio=2, dropout=0.1)
    for parameter in prior.parameters():  # GPT init makes tiny logits; larger weights make every dependency show
        parameter.data.normal_(0, 0.5)
    return prior.double().eval()


def conditions(shape: PriorShape, batch: int) -> torch.Tensor | None:
    return torch.arange(batch) % shape.num_conditions if shape.num_conditions else None


@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=["multi-query", "grouped", "multi-head"])
@pytest.mark.parametrize("conditional", [True, False])
def test_cached_steps_match_the_full_forward_at_every_cell(conditional, kv_heads):
    shape = PriorShape(16, 6, 5, 4 if conditional else 0)
    prior = tiny_prior(shape, kv_heads)
    codes = torch.randint(0, 16, (3, 6, 5))
    condition = conditions(shape, 3)
    full = prior(codes, condition).flatten(2)
    cache, flat = prior.empty_cache(3, torch.float64), codes.flatten(1)
    for t in range(30):
        previous = flat[:, t - 1] if t else torch.full((3,), 9)  # ignored at the start
        logits, new = prior.step(previous, torch.tensor([t]), condition, cache)
        write_cache(cache, new, t)
        torch.testing.assert_close(logits, full[:, :, t], rtol=0, atol=1e-12)


def test_the_last_cell_depends_on_the_first():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 6, 5))
    condition = conditions(SHAPE, 2)
    changed = codes.clone()
    changed[:, 0, 0] = (changed[:, 0, 0] + 5) % 16
    difference = (prior(codes, condition) - prior(changed, condition)).abs()[:, :, -1, -1]
    assert difference.amax() > 1e-3
    embedded = []  # gradient of the last cell's logits w.r.t. the embedding of cell 0's code
    hook = prior.embed.register_forward_hook(lambda module, args, out: embedded.append(out) or out.retain_grad())
    prior(codes, condition)[:, :, -1, -1].sum().backward()
    hook.remove()
    assert embedded[0].grad[:, 0].abs().sum() > 0  # input token 1 holds cell 0's code


@pytest.mark.parametrize("cell", [0, 7, 14, 29])
def test_logits_never_see_the_cell_itself_or_later_cells(cell):
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 6, 5))
    changed = codes.flatten(1).repeat(31, 1)  # row n: cell n changed (row 30: nothing changed)
    changed[torch.arange(30), torch.arange(30)] += 3
    logits = prior(changed.remainder(16).view(31, 6, 5), torch.zeros(31, dtype=torch.long)).flatten(2)[:, :, cell]
    moved = (logits[:30] - logits[30]).abs().amax(1)
    assert torch.equal(moved > 1e-9, torch.arange(30) < cell), moved  # rows of a batch may differ by rounding


def test_condition_reaches_the_first_cell_and_dropout_only_trains():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 6, 5))
    first = prior(codes, torch.tensor([0, 0]))[:, :, 0, 0]
    assert not torch.allclose(first, prior(codes, torch.tensor([3, 3]))[:, :, 0, 0])
    assert torch.equal(prior(codes, torch.tensor([1, 2])), prior(codes, torch.tensor([1, 2])))
    prior.train()
    assert not torch.equal(prior(codes, torch.tensor([1, 2])), prior(codes, torch.tensor([1, 2])))


@pytest.mark.parametrize("conditional,temperature,top_k", [(True, 1.0, 0), (False, 0.7, 3)])
def test_cached_and_naive_samplers_give_identical_samples(conditional, temperature, top_k):
    shape = PriorShape(16, 6, 5, 4 if conditional else 0)
    prior = tiny_prior(shape).float()
    uniforms, condition = sampling_rule.sampling_randomness(3, 6, 5, shape.num_conditions, seed=1)
    uniforms = torch.from_numpy(uniforms)
    condition = None if condition is None else torch.from_numpy(condition)
    cached = sample(prior, uniforms, condition, temperature, top_k)
    assert torch.equal(cached, sample(prior, uniforms, condition, temperature, top_k, naive=True))
    assert torch.equal(cached, sample(prior, uniforms, condition, temperature, top_k))  # reproducible
    assert cached.shape == (3, 6, 5) and cached.min() >= 0 and cached.max() < 16


def test_temperature_and_top_k_are_honoured():
    prior = tiny_prior().float()
    uniforms = torch.rand(8, 6, 5, generator=torch.Generator().manual_seed(2))
    condition = conditions(SHAPE, 8)
    greedy = sample(prior, uniforms, condition, top_k=1)
    logits = prior(greedy, condition)
    assert torch.equal(greedy, logits.argmax(1))  # top-1: every cell is its most likely code
    top3 = sample(prior, uniforms, condition, top_k=3)
    ranks = (prior(top3, condition) > prior(top3, condition).gather(1, top3[:, None])).sum(1)
    assert ranks.max() <= 2  # top-3: never worse than the third most likely
    cold = sample(prior, uniforms, condition, temperature=1e-4)
    assert torch.equal(cold, greedy)  # T -> 0 is greedy
    assert not torch.equal(sample(prior, uniforms, condition, temperature=5.0), greedy)


def test_same_sampler_contract_as_the_pixelcnn():
    """Same argument errors as trainer.stage2.pixelcnn.sample, and a progress update per row."""
    prior = tiny_prior().float()
    u = torch.rand(2, 6, 5)
    for kwargs, match in [({"temperature": 0}, "temperature"), ({"top_k": 17}, "top_k")]:
        for sampler in (sample, pixelcnn_sample):
            with pytest.raises(ValueError, match=match):
                sampler(prior, u, torch.tensor([0, 1]), **kwargs)
    with pytest.raises(ValueError, match="conditional"):
        sample(prior, u, None)

    class Counter:
        rows = 0

        def update(self, n: int) -> None:
            self.rows += n

    counter = Counter()
    sample(prior, u, torch.tensor([0, 1]), progress=counter)
    assert counter.rows == 6


def test_bad_shapes_are_refused():
    for kwargs in ({"width": 10, "heads": 4}, {"heads": 4, "kv_heads": 3}, {"layers": 0}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            TransformerPrior(SHAPE, **{"width": 16, "heads": 4, "kv_heads": 4, **kwargs})


def test_loss_falls_on_a_tiny_code_set():
    """Stripes whose phase depends on the condition: learnable only through the position embeddings,
    the attention to earlier cells and the condition."""
    torch.manual_seed(0)
    shape = PriorShape(8, 6, 6, 2)
    prior = TransformerPrior(shape, layers=2, width=32, heads=4, kv_heads=2, mlp_ratio=2, dropout=0.0)
    rows = torch.arange(6)[:, None] + torch.arange(6)[None, :]
    codes = torch.stack([(rows + c) % 8 for c in (0, 3)] * 4)
    condition = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(prior(codes, condition), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]
