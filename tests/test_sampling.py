"""Per-slot sampling (models/sampling.py): the exponential race over each row's top-k draws from the right
distribution, and a row's token depends on nothing but its own logits, settings and noise: not on how many
logits the step ranks (the widest top-k among the slots that sample, on CPU), nor on what other slots draw."""

from __future__ import annotations

import torch

from duplex.config import MAX_TOP_K
from duplex.models.sampling import SlotRandomness, sample_per_slot


def test_a_rows_token_does_not_depend_on_how_many_logits_the_step_ranks():
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 400, 2048
    logits = torch.randn(rows, vocab, generator=gen) * 3
    temp = torch.rand(rows, generator=gen) * 1.5 + 0.05
    temp[::7] = 0.0                                          # some rows greedy
    top_k = torch.randint(1, 300, (rows,), generator=gen)
    noise = torch.empty(rows, MAX_TOP_K).exponential_(1.0, generator=gen)
    widest = int(top_k.max())
    tokens = [sample_per_slot(logits, temp, top_k, noise, width) for width in (widest, 300, 421, None)]
    assert all(torch.equal(tokens[0], other) for other in tokens[1:])
    for row in range(0, rows, 37):                          # and alone, ranked exactly as wide as its own top-k
        k = int(top_k[row])
        alone = sample_per_slot(logits[row: row + 1], temp[row: row + 1], top_k[row: row + 1], noise[row: row + 1], k)
        assert int(alone) == int(tokens[0][row])
    assert torch.equal(tokens[0][::7], logits[::7].argmax(-1))
    sampled = tokens[0][temp > 0]
    assert (sampled != logits[temp > 0].argmax(-1)).float().mean() > 0.3   # not greedy in disguise


def test_the_race_draws_each_of_the_top_k_by_its_probability_and_nothing_else():
    gen = torch.Generator().manual_seed(1)
    draws, vocab, k, temperature = 40_000, 40, 5, 0.7
    logits = torch.randn(vocab, generator=gen) * 2
    noise = torch.empty(draws, MAX_TOP_K).exponential_(1.0, generator=gen)
    tokens = sample_per_slot(logits.expand(draws, vocab), torch.full((draws,), temperature),
                             torch.full((draws,), k, dtype=torch.long), noise, k)
    top = logits.topk(k).indices
    assert set(tokens.unique().tolist()) == set(top.tolist())
    expected = torch.softmax(logits[top] / temperature, dim=0)
    observed = torch.stack([(tokens == token).float().mean() for token in top])
    assert torch.allclose(observed, expected, atol=0.01), (observed, expected)


def test_a_slots_noise_is_its_own_whatever_the_other_slots_draw():
    def drawn(other_widths: tuple[int, int]) -> torch.Tensor:
        randomness = SlotRandomness(2, 9)
        randomness.reseed(0, 7)
        randomness.reseed(1, 8)
        randomness.set_widths(0, 25, 250)
        randomness.set_widths(1, *other_widths)
        noise = torch.zeros(2, 9, MAX_TOP_K)
        for _ in range(3):
            noise = randomness.draw([0, 1]).clone()
        return noise

    narrow, wide = drawn((1, 1)), drawn((MAX_TOP_K, MAX_TOP_K))
    assert torch.equal(narrow[0], wide[0])
    randomness = SlotRandomness(1, 9)
    randomness.set_widths(0, 25, 250)
    assert randomness.widest([0]) == (25, 250) and randomness.widest([]) == (1, 1)
    first = randomness.draw([0]).clone()
    assert (first[0, 0, :25] != 1.0).all() and (first[0, 0, 25:] == 1.0).all()   # only its own columns drawn
    assert (first[0, 1:, 250:] == 1.0).all()
    randomness.set_widths(0, 10_000, 0)                       # clipped to the noise's width, at least one
    assert randomness.widths[0] == (MAX_TOP_K, 1)
