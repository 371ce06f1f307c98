"""Per-slot sampling for a batched `LMGen`: each conversation has its own temperature, top-k and seed.

moshi's LMGen samples the whole batch with one temperature and the global RNG. We keep its step
and replace only the two sampling points, through its public extension points:
  - text: `on_text_logits_hook` samples per slot, then leaves a single finite logit per row, so
    LMGen's own greedy pick (use_sampling=False) returns exactly our token;
  - audio: `depformer_step` is overridden (LMGen graphs `self.depformer_step`, so CUDA graphs keep working).
Randomness comes in as a noise tensor drawn per slot from that slot's own generator, outside the
graph, so a slot's samples depend only on its seed and its own history, never on its neighbours.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass, fields

import torch
from moshi.models.lm import LMGen, LMModel

from ..config import MAX_TOP_K, default_of
from .guidance import LMGEN_GUIDED, Guidance


@dataclass
class SamplingSettings:
    """One slot's sampling; the field names are config keys, and the defaults are the config schema's."""

    temperature: float = default_of("temperature")            # audio tokens; 0 = greedy
    text_temperature: float = default_of("text_temperature")  # text tokens; 0 = greedy
    top_k: int = default_of("top_k")
    text_top_k: int = default_of("text_top_k")
    seed: int | None = default_of("seed")                     # None: fresh entropy
    cfg_coef: float = default_of("cfg_coef")                  # guided models only (models/guidance.py)
    condition: str | None = default_of("condition")           # None: the model's default

    def updated(self, config: dict) -> "SamplingSettings":
        known = {f.name: config[f.name] for f in fields(self) if f.name in config}
        return SamplingSettings(**{**self.__dict__, **known})


def sample_per_slot(logits: torch.Tensor, temp: torch.Tensor, top_k: torch.Tensor, noise: torch.Tensor,
                    width: int | None = None) -> torch.Tensor:
    """logits [B, V], temp [B], top_k [B] long, noise [B, K] Exp(1) draws -> tokens [B].

    Top-k sampling by the exponential race (argmax p/q with q ~ Exp(1) is a categorical draw); rows with
    temp == 0 take the plain argmax. `width` (<= K): how many of the top logits to rank, at least every
    sampling row's top-k (None: K, fixed shapes for CUDA graphs). A row's token does not depend on the
    width: its weights are exp((logit - max) / temp), unnormalised, so a wider ranking only adds entries
    that its top-k masks out (on CPU, ranking 250 of 2,048 instead of 500 costs two thirds as much).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    k = min(width if width is not None else noise.shape[-1], noise.shape[-1], logits.shape[-1])
    top_values, top_index = logits.topk(k, dim=-1)                       # [B, k], sorted
    weights = torch.exp((top_values - top_values[:, :1]) / temp.clamp_min(1e-5)[:, None])
    rank = torch.arange(k, device=logits.device)[None, :]
    weights = torch.where(rank < top_k[:, None], weights, torch.zeros_like(weights))
    choice = (weights / noise[:, :k]).argmax(dim=-1, keepdim=True)       # [B, 1]
    sampled = top_index.gather(-1, choice)[:, 0]
    return torch.where(temp > 0, sampled, greedy)


class BatchedLMGen(LMGen):
    """LMGen with per-slot sampling settings and a per-slot "forced silent" switch."""

    def __init__(self, lm_model: LMModel, batch_size: int, silence_codes: torch.Tensor, agent_q: int | None = None,
                 guidance: Guidance | None = None):
        """`agent_q`: the codebooks to sample (default all dep_q); PersonaPlex's depformer also predicts the
        user's codebooks after its own 8, which generation never needs (models/persona_gen.py).
        `guidance`: per-slot classifier-free guidance, for a model that takes a condition (Hibiki)."""
        self.guidance = guidance
        if guidance is None:
            super().__init__(lm_model, use_sampling=False, support_out_of_sync=True)
        else:
            super().__init__(lm_model, use_sampling=False, support_out_of_sync=True,
                             cfg_coef=LMGEN_GUIDED if guidance.doubled else 1.0,
                             condition_tensors=guidance.condition_tensors())
        self.on_text_logits_hook = self._sample_text
        device = lm_model.device
        n_streams = 1 + lm_model.dep_q
        # Persistent buffers, updated in place between steps (CUDA graphs capture their addresses).
        self.slot_temp_audio = torch.zeros(batch_size, device=device)
        self.slot_temp_text = torch.zeros(batch_size, device=device)
        self.slot_top_k_audio = torch.ones(batch_size, dtype=torch.long, device=device)
        self.slot_top_k_text = torch.ones(batch_size, dtype=torch.long, device=device)
        self.force_silence = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.noise = torch.ones(batch_size, n_streams, MAX_TOP_K, device=device)
        self.silence_codes = silence_codes.to(device=device, dtype=torch.long)   # [agent_q]
        self.agent_q = lm_model.dep_q if agent_q is None else agent_q
        # How many top logits a step ranks, text and audio (sample_per_slot's `width`): `rank_for` narrows them
        # before each step on CPU; CUDA graphs keep the full MAX_TOP_K.
        self.width_text = MAX_TOP_K
        self.width_audio = MAX_TOP_K

    def _init_streaming_state(self, batch_size: int) -> tp.Any:
        state = super()._init_streaming_state(batch_size)
        if self.guidance is not None and self.guidance.doubled:
            self.guidance.install(state)
        return state

    def rank_for(self, randomness: "SlotRandomness", sampling_slots: list[int]) -> None:
        """Before a step: on CPU, rank only as many logits as the widest top-k among the slots that sample
        (CUDA graphs were captured with fixed shapes: there the widths stay MAX_TOP_K)."""
        if self.lm_model.device.type == "cpu":
            self.width_text, self.width_audio = randomness.widest(sampling_slots)

    def _sample_text(self, text_logits: torch.Tensor) -> None:
        """text_logits [B, 1, 1, V]: rewritten in place so that its argmax is our sampled token."""
        token = sample_per_slot(text_logits[:, 0, 0], self.slot_temp_text, self.slot_top_k_text, self.noise[:, 0],
                                self.width_text)
        pad = torch.full_like(token, self.lm_model.text_padding_token_id)
        token = torch.where(self.force_silence, pad, token)
        text_logits.fill_(float("-inf"))
        text_logits[:, 0, 0].scatter_(-1, token[:, None], 0.0)

    def depformer_step(self, text_token: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        """Samples the model's agent_q audio codebooks, one after another, for every slot: [B, dep_q]
        (a depformer that also predicts the user's codebooks gets zeros there; the caller keeps the real ones)."""
        lm_model = self.lm_model
        assert lm_model.depformer is not None
        batch_size = text_token.shape[0]
        guidance = self.guidance if self.guidance is not None and self.guidance.doubled else None
        previous = text_token
        tokens: list[torch.Tensor] = []
        # guided: transformer_out holds each slot's two rows side by side ([2B, 1, D], models/guidance.py)
        with lm_model.depformer.streaming(batch_size if guidance is None else 2 * batch_size):
            for codebook in range(self.agent_q):
                if guidance is None:
                    logits = lm_model.forward_depformer(codebook, previous[:, None, None], transformer_out)
                else:
                    both = lm_model.forward_depformer(codebook, previous.repeat_interleave(2)[:, None, None],
                                                      transformer_out)                       # [2B, 1, 1, card]
                    logits = guidance.mix(both[0::2], both[1::2])
                token = sample_per_slot(logits[:, 0, 0], self.slot_temp_audio, self.slot_top_k_audio,
                                        self.noise[:, 1 + codebook], self.width_audio)
                tokens.append(token)
                previous = token
        audio = torch.stack(tokens, dim=1)
        # A forced-silent slot says the silence codes, so what it "hears itself say" agrees.
        audio = torch.where(self.force_silence[:, None], self.silence_codes[None, : self.agent_q], audio)
        if lm_model.dep_q > self.agent_q:
            audio = torch.cat([audio, audio.new_zeros(batch_size, lm_model.dep_q - self.agent_q)], dim=1)
        return audio


class SlotRandomness:
    """One CPU generator per slot; draws the Exp(1) noise for the slots that sample this step, each slot only as
    wide as its own top-k (text, audio): the rest of its row is never read (sample_per_slot masks those ranks),
    and what a slot draws depends only on its own seed and settings."""

    def __init__(self, batch_size: int, n_streams: int, width: int = MAX_TOP_K):
        self.generators = [torch.Generator() for _ in range(batch_size)]
        self.noise = torch.ones(batch_size, n_streams, width)
        self.widths = [(width, width)] * batch_size      # per slot: (text, audio) columns drawn
        for slot in range(batch_size):
            self.reseed(slot, None)

    def reseed(self, slot: int, seed: int | None) -> None:
        if seed is None:
            self.generators[slot].seed()  # fresh entropy
        else:
            self.generators[slot].manual_seed(seed)

    def set_widths(self, slot: int, text_top_k: int, audio_top_k: int) -> None:
        """The slot's top-k (clipped to the noise's width): the columns its draws fill from now on."""
        width = self.noise.shape[-1]
        self.widths[slot] = (max(1, min(text_top_k, width)), max(1, min(audio_top_k, width)))

    def draw(self, sampling_slots: list[int]) -> torch.Tensor:
        for slot in sampling_slots:
            text, audio = self.widths[slot]
            generator = self.generators[slot]
            self.noise[slot, 0, :text].exponential_(1.0, generator=generator)
            self.noise[slot, 1:, :audio].exponential_(1.0, generator=generator)
        return self.noise

    def widest(self, sampling_slots: list[int]) -> tuple[int, int]:
        """The most columns any of these slots ranks (text, audio): sample_per_slot's widths for a step."""
        if not sampling_slots:
            return 1, 1
        return (max(self.widths[slot][0] for slot in sampling_slots),
                max(self.widths[slot][1] for slot in sampling_slots))
