"""Grouped-query attention without the per-step KV copy (models/grouped_attention.py): on CPU, moshi's
attention with `kv_repeat` gives the same numbers bit for bit as moshi's own path, and no longer widens the
cache; models without `kv_repeat` and other devices keep moshi's path."""

from __future__ import annotations

import pytest
import torch
from moshi.models import LMGen
from moshi.modules import transformer as moshi_transformer

from duplex.models import grouped_attention
from duplex.models.grouped_attention import _grouped_sdpa, moshis_own
from duplex.models.inference import inference
from duplex.models.spec import resolve_checkpoint


@pytest.mark.parametrize("repeat", [2, 4])
def test_sdpa_on_grouped_heads_equals_sdpa_on_widened_ones(repeat):
    gen = torch.Generator().manual_seed(repeat)
    batch, heads, steps, cache, dim = 5, 8, 1, 37, 16
    query = torch.randn(batch, heads, steps, dim, generator=gen)
    key, value = (torch.randn(batch, heads // repeat, cache, dim, generator=gen) for _ in range(2))
    mask = torch.rand(batch, 1, steps, cache, generator=gen) > 0.3
    widened = [grouped_attention._EXPAND(x, repeat) for x in (key, value)]
    assert widened[0].shape == (batch, heads, cache, dim)
    expected = torch.nn.functional.scaled_dot_product_attention(query, *widened, mask, dropout_p=0.0)
    assert torch.equal(_grouped_sdpa(query, key, value, mask, dropout_p=0.0), expected)
    # equal head counts: a plain SDPA call
    assert torch.equal(_grouped_sdpa(query, *widened, mask, dropout_p=0.0), expected)


def greedy_tokens(lm, codes: torch.Tensor) -> torch.Tensor:
    gen = LMGen(lm, use_sampling=False)
    out = []
    with inference(torch.device("cpu")), gen.streaming(codes.shape[0]):
        for t in range(codes.shape[-1]):
            tokens = gen.step(codes[:, :, t: t + 1])
            if tokens is not None:
                out.append(tokens[:, :, 0].clone())
    return torch.stack(out)


def test_tiny_hibiki_zero_steps_alike_without_the_copy(monkeypatch):
    lm = resolve_checkpoint("tiny:hibiki-zero").get_moshi(device="cpu", dtype=torch.float32)
    assert any(getattr(m, "kv_repeat", 1) > 1 for m in lm.modules())
    user_q = lm.n_q - lm.dep_q
    codes = torch.randint(0, lm.card, (3, user_q, 12), generator=torch.Generator().manual_seed(0))
    widened = []
    moshis_copy = grouped_attention._EXPAND
    monkeypatch.setattr(grouped_attention, "_EXPAND", lambda x, n: widened.append(x.shape) or moshis_copy(x, n))
    for name in ("expand_repeated_kv", "F"):   # undone after the test, whatever install() does
        monkeypatch.setattr(moshi_transformer, name, getattr(moshi_transformer, name))
    with moshis_own():
        reference = greedy_tokens(lm, codes)
    assert len(widened) == 2 * 2 * 12          # moshi's path: keys and values, 2 layers, 12 steps
    widened.clear()
    grouped_attention.install()
    assert grouped_attention.installed()
    grouped = greedy_tokens(lm, codes)
    assert widened == []                       # on CPU the cache was never widened
    assert torch.equal(grouped, reference)
    assert len({tuple(frame[0, 1:].tolist()) for frame in reference}) > 1   # it does produce varied audio
    with moshis_own():                         # and moshi's path is there to compare with
        assert not grouped_attention.installed()
    assert grouped_attention.installed()


def test_off_cpu_the_cache_is_widened_as_moshi_does():
    x = torch.randn(2, 3, 5, 4)
    moved = x.to("meta")
    assert grouped_attention._expand_off_cpu(x, 2) is x
    assert grouped_attention._expand_off_cpu(moved, 2).shape == (2, 6, 5, 4)
