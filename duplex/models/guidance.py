"""Classifier-free guidance per slot, for a batched LMGen whose model takes a condition (Hibiki).

moshi's LMGen guides the whole batch with one coefficient: with `cfg_coef != 1` it runs every row twice,
conditioned (rows [0, B)) and unconditioned (rows [B, 2B)), and mixes the text and audio logits as
`null + (cond - null) * cfg_coef`. We keep its step and change three things through the state it builds:
  - the two rows of a slot are adjacent (slot s: rows 2s conditioned, 2s + 1 unconditioned), so the
    slots in use stay a prefix of the model's rows and active_rows.py narrows them as a view;
  - each slot has its own coefficient and its own condition (the conditioned row's description);
  - the text mix happens in our wrapper of `forward_text`, which hands LMGen `[mixed; mixed]`: LMGen's own
    mix, `mixed + (mixed - mixed) * c`, then returns `mixed` unchanged. The audio mix is in our depformer step.
A slot whose coefficient is 1 takes the conditioned logits as they are, as moshi does at `cfg_coef` 1 (it runs
no unconditioned row then). The unconditioned row's description is the negative moshi.run_inference uses.

The model computes both rows of every slot, whatever its coefficient: a guided model costs two rows per
conversation (docs/moshi-family.md). Unguided (`doubled=False`, `duplex serve --guidance off`), a slot has
one row, as moshi runs at `cfg_coef` 1, and keeps its own condition.
"""

from __future__ import annotations

import typing as tp

import torch
from moshi.conditioners import ConditionAttributes
from moshi.models.lm import LMModel

# moshi.run_inference's Hibiki conditions: the conditioned rows say "very_good", the negatives "very_bad".
POSITIVE = "very_good"
NEGATIVE = "very_bad"
# moshi's LMGen guides only when its cfg_coef differs from 1; ours is per slot, so LMGen's is a marker.
LMGEN_GUIDED = 2.0


class GuidanceError(ValueError):
    """A condition the model does not know."""


class Guidance:
    """The per-slot coefficients and conditions of a guided batch of `batch_size` slots."""

    def __init__(self, lm: LMModel, batch_size: int, doubled: bool = True):
        provider = lm.condition_provider
        assert provider is not None and lm.fuser is not None
        # Hibiki has one text conditioner ("description", a lookup table of a few values)
        self.attribute = next(iter(provider.conditioners))
        tokenizer = getattr(provider.conditioners[self.attribute], "tokenizer", None)
        self.values: tuple[str, ...] = tuple(getattr(tokenizer, "possible_values", None) or (POSITIVE, NEGATIVE))
        self.default = POSITIVE if POSITIVE in self.values else self.values[-1]
        self.negative = NEGATIVE if NEGATIVE in self.values else self.values[0]
        self.lm = lm
        self.batch_size = batch_size
        self.doubled = doubled
        self.coef = torch.ones(batch_size, device=lm.device)          # [B] float32; 1 = unguided
        self._sums: dict[str, torch.Tensor] = {}

    @staticmethod
    def applies(lm: LMModel) -> bool:
        """A model with conditioners summed into its input (Hibiki's layout) is guided."""
        return lm.fuser is not None and lm.condition_provider is not None and bool(lm.condition_provider.conditioners)

    def condition_tensors(self) -> dict:
        """LMGen's condition tensors, slot-interleaved: [positive, negative] * B (2B rows); unguided [positive] * B."""
        values = (self.default, self.negative) if self.doubled else (self.default,)
        conditions = [self._attributes(v) for _ in range(self.batch_size) for v in values]
        assert self.lm.condition_provider is not None
        return self.lm.condition_provider.prepare_and_provide(conditions)

    def check(self, value: str) -> str:
        if value not in self.values:
            raise GuidanceError(f"condition {value!r} is not one of this model's: {', '.join(self.values)}")
        return value

    def set_slot(self, state: tp.Any, slot: int, coef: float, condition: str | None) -> None:
        """Between steps: one slot's coefficient and its conditioned row's description (LMGen's `state`)."""
        self.coef[slot] = coef
        if state is not None and state.condition_sum is not None:
            state.condition_sum[2 * slot if self.doubled else slot].copy_(self._sum(self.check(condition or self.default))[0])

    def install(self, state: tp.Any) -> None:
        """Makes a fresh LMGen state interleave the slots' rows and mix per slot (see the module doc)."""
        from moshi.utils.compile import CUDAGraphed

        lm = self.lm
        state.graphed_main = CUDAGraphed(self._forward_text, disable=lm.device.type != "cuda")
        state.reset_callback = lambda mask: lm.reset_streaming(mask.repeat_interleave(2))
        state.set_exec_mask_callback = lambda mask: lm.set_exec_mask(mask.repeat_interleave(2))

    def mix(self, cond: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """cond, null [R, ...] logits -> [R, ...]: moshi's formula with each slot's coefficient."""
        coef = self.coef[: cond.shape[0]].view(-1, *([1] * (cond.dim() - 1))).to(cond.dtype)
        return torch.where(coef == 1, cond, null + (cond - null) * coef)

    def _forward_text(self, input_: torch.Tensor, condition_sum: torch.Tensor | None,
                      condition_cross: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """LMGen hands [x; x] ([2R, K, 1]); the model sees the rows interleaved, returns interleaved
        transformer outputs [2R, 1, D] (our depformer step reads them so) and LMGen gets [mixed; mixed]."""
        rows = input_.shape[0] // 2
        out, logits = self.lm.forward_text(input_[:rows].repeat_interleave(2, dim=0), condition_sum, condition_cross)
        mixed = self.mix(logits[0::2], logits[1::2])                 # [R, 1, 1, V]
        return out, torch.cat([mixed, mixed], dim=0)

    def _sum(self, value: str) -> torch.Tensor:
        if value not in self._sums:
            provider, fuser = self.lm.condition_provider, self.lm.fuser
            assert provider is not None and fuser is not None
            total = fuser.get_sum(provider.prepare_and_provide([self._attributes(value)]))
            assert total is not None
            self._sums[value] = total.to(self.lm.dtype)
        return self._sums[value]

    def _attributes(self, value: str) -> ConditionAttributes:
        return ConditionAttributes(text={self.attribute: value}, tensor={})
