"""The 7B architectures built on the `meta` device (no memory, no weights) through MoshiBatch, the loader a
download takes: parameter counts and the per-slot state against docs/deploy.md's memory arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from duplex.models.active_rows import ActiveRows
from duplex.models.moshi_batch import MoshiBatch
from duplex.models.real_size import parameters
from duplex.models.spec import WeightsUnavailable, resolve_checkpoint

DEPLOY = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
SLOTS = 2


def _state_bytes_per_slot(root: torch.nn.Module) -> float:
    rows = ActiveRows([root], SLOTS)
    return sum(getattr(h, a).numel() * getattr(h, a).element_size() for h, a, _ in rows.fields) / SLOTS


@pytest.fixture(scope="module", params=["moshi7b", "personaplex7b"])
def model(request) -> tuple[str, MoshiBatch]:
    return request.param, MoshiBatch(resolve_checkpoint(f"random:{request.param}"), SLOTS, "meta", torch.bfloat16)


def test_parameters_and_streams(model):
    name, batch = model
    assert batch.lm.device.type == "meta"
    assert batch.lm.dim == 4096 and len(batch.lm.transformer.layers) == 32
    expected = {"moshi7b": (7_687_729_152, 8, False), "personaplex7b": (8_371_408_896, 16, True)}[name]
    assert (parameters(batch.lm), batch.lm.dep_q, batch.persona) == expected
    assert batch.agent_q == 8 and parameters(batch.mimi) == 79_308_609


def test_memory_arithmetic_of_deploy_md(model):
    name, batch = model
    # "7.69 B parameters ... x 2 bytes = 15.4 GB" (Moshi's LM; bf16 on the device)
    weights_gb = sum(p.numel() * p.element_size() for p in batch.lm.parameters()) / 1e9
    documented = float(re.search(r"([\d.]+) B parameters", DEPLOY).group(1))
    if name == "moshi7b":
        assert round(parameters(batch.lm) / 1e9, 2) == documented
        assert round(weights_gb, 1) == float(re.search(r"\*\*([\d.]+) GB\*\*; Mimi", DEPLOY).group(1))
    # "2 (K, V) x 32 layers x 3,000 positions x 4,096 x 2 bytes = 1.57 GB per slot": the ring KV cache
    kv_gb = _state_bytes_per_slot(batch.lm.transformer) / 1e9
    assert round(kv_gb, 2) == float(re.search(r"= \*\*([\d.]+) GB per slot\*\*", DEPLOY).group(1))
    # "the depformer's and Mimi's streaming state: a few MB per slot"
    assert _state_bytes_per_slot(batch.mimi) < 20e6
    # "Mimi adds ~0.3 GB": its weights stay float32 whatever the LM's dtype
    mimi_gb = sum(p.numel() * p.element_size() for p in batch.mimi.parameters()) / 1e9
    assert round(mimi_gb, 1) == float(re.search(r"Mimi adds ~([\d.]+) GB", DEPLOY).group(1))


def test_stt_1b_architecture():
    from duplex.models.stt import SttBatch

    stt = SttBatch(resolve_checkpoint("random:stt1b"), SLOTS, "meta", torch.bfloat16)
    assert stt.lm.dep_q == 0 and stt.lm.n_q == 32 and stt.lm.dim == 2048
    assert 0.9e9 < parameters(stt.lm) < 1.2e9     # "1B"


def test_unknown_random_spec_says_what_is_known():
    with pytest.raises(WeightsUnavailable, match="random:moshi7b"):
        resolve_checkpoint("random:nope")


@pytest.mark.parametrize("name,dim,layers,per_side,backbone_b", [("hibiki2b", 2560, 24, 16, 2), ("hibiki1b", 2048, 16, 8, 1)])
def test_hibiki_architectures(name, dim, layers, per_side, backbone_b):
    """Hibiki's README: "2B (for the backbone, a bit more with the depth transformer), 16 RVQ per stream";
    "1B ..., 8 RVQ per stream". Loaded guided, through the loader a download takes."""
    batch = MoshiBatch(resolve_checkpoint(f"random:{name}"), SLOTS, "meta", torch.bfloat16)
    lm = batch.lm
    assert (lm.dim, len(lm.transformer.layers), lm.dep_q, lm.n_q, batch.agent_q) == (dim, layers, per_side,
                                                                                   2 * per_side, per_side)
    assert batch.guidance is not None and batch.guidance.values == ("very_bad", "bad", "neutral", "good", "very_good")
    backbone = parameters(lm) - parameters(lm.depformer) - sum(parameters(m) for m in lm.depformer_in)
    assert round(backbone / 1e9) == backbone_b
    assert parameters(lm.depformer) > 0 and batch.mimi.num_codebooks == per_side
    # guided: the LM keeps two rows per slot (its KV cache: 2 x layers x context x dim per slot)
    # (K, V) x layers x 3,000 positions x dim x 2 bytes, twice: 1.47 GB per conversation for Hibiki 2B
    rows_kv = 2 * layers * 3000 * dim * 2
    assert round(_state_bytes_per_slot(lm.transformer) / 1e9, 2) == round(2 * rows_kv / 1e9, 2)


FAMILY = (Path(__file__).resolve().parents[1] / "docs" / "moshi-family.md").read_text()


def test_hibiki_zero_3b_parameters_and_grouped_kv_cache():
    """Hibiki-Zero's reconstructed config builds the published "3B" (3.13 B) and, with kv_repeat 2, a KV cache
    half as wide as its queries: docs/moshi-family.md's per-slot figure."""
    batch = MoshiBatch(resolve_checkpoint("random:hibikizero3b"), SLOTS, "meta", torch.bfloat16)
    assert batch.checkpoint.model_type == "hibiki" and (batch.lm.n_q, batch.lm.dep_q, batch.agent_q) == (32, 16, 16)
    assert parameters(batch.lm) == 3_131_686_912 and batch.mimi.num_codebooks == 16
    assert batch.lm.transformer.layers[0].self_attn.kv_repeat == 2
    # "2 (K, V) x 28 layers x 3,000 positions x 1,024 (8 of 16 heads x 128) x 2 bytes = 0.34 GB per slot"
    kv_gb = _state_bytes_per_slot(batch.lm.transformer) / 1e9
    assert round(kv_gb, 2) == float(re.search(r"= \*\*([\d.]+) GB per slot\*\* \(Hibiki-Zero", FAMILY).group(1))


def test_jmoshi_7b_is_moshi_7b():
    batch = MoshiBatch(resolve_checkpoint("random:jmoshi7b"), SLOTS, "meta", torch.bfloat16)
    assert parameters(batch.lm) == 7_687_729_152 and batch.tokenizer.vocab_size() < 32000
