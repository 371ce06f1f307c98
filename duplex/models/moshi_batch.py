"""Moshi over a fixed batch of slots: one batched Mimi encode -> LMGen step -> Mimi decode per tick.

Runs on the model worker thread only (the scheduler guarantees it), so no locking here.
Shapes: B = slots, F = 1920 samples (80 ms), K = 8 audio codebooks per side.

A model whose depformer also predicts the user's stream (PersonaPlex, dep_q 16) runs through
`PersonaLMGen` and takes persona prompts: `begin_prefill` fills a slot with one (models/prefill.py),
between ticks, on this same thread. A model that takes a condition (Hibiki) runs guided: two rows per
slot, each slot with its own `cfg_coef` and condition (models/guidance.py).
"""

from __future__ import annotations

import logging
import typing as tp
from dataclasses import dataclass

import numpy as np
import torch
from moshi.models import loaders
from moshi.utils.compile import no_compile

from ..audio import FRAME_SAMPLES
from .active_rows import ROW_BUCKET, ActiveRows   # steps compute a multiple of ROW_BUCKET leading slots
from .guidance import Guidance
from .inference import inference
from .persona import PersonaPrompt, VoiceLibrary, build_prompt, wrap_system_tags
from .persona_gen import PersonaLMGen
from .prefill import Prefill, PrefixCache, RowStates
from . import grouped_attention
from .sampling import BatchedLMGen, SamplingSettings, SlotRandomness
from .text_pieces import TextPieces

log = logging.getLogger(__name__)


@dataclass
class StepInput:
    pcm: np.ndarray            # [B, F] float32, zeros for slots without a frame
    execute: np.ndarray        # [B] bool: slot has a frame this tick
    reset: np.ndarray          # [B] bool: wipe the slot's state before this tick
    first: np.ndarray          # [B] bool: first frame of a conversation (moshi skips its encoder state)
    force_silence: np.ndarray  # [B] bool: the slot's assistant is forced silent


@dataclass
class StepOutput:
    pcm: np.ndarray            # [B, F] float32 decoded assistant audio (silence before the model's delay)
    text: list[str | None]     # [B] text piece the model said this step, if any
    has_output: np.ndarray     # [B] bool: the model's delay has passed for this slot


class MoshiBatch:
    """Loads Mimi + the LM once and serves `slots` independent streams through one batched step."""

    def __init__(self, checkpoint: loaders.CheckpointInfo, slots: int, device: str, dtype: torch.dtype,
                 active_rows: bool | None = None, prefix_cache_bytes: int = 256 << 20, guidance: bool = True):
        """`active_rows`: step only the prefix of slots in use (None: on CPU, where it pays; see active_rows.py).
        `prefix_cache_bytes`: memory for prefilled persona prompts (persona models only). `guidance`: a
        conditioned model computes two rows per slot, for per-slot cfg_coef (False: one, cfg_coef 1 only)."""
        self.slots = slots
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.mimi = self._load_mimi()
        self.lm = checkpoint.get_moshi(device=self.device, dtype=dtype)
        if any(getattr(module, "kv_repeat", 1) > 1 for module in self.lm.modules()):
            grouped_attention.install()   # Hibiki-Zero: no copy of the KV cache per step on CPU
        # The model's own codebooks (8): Moshi's depformer predicts those only (dep_q 8 of n_q 16), PersonaPlex's
        # predicts the user's as well (dep_q == n_q = 16).
        self.persona = self.lm.dep_q == self.lm.n_q
        self.agent_q = self.lm.n_q // 2 if self.persona else self.lm.dep_q
        self.tokenizer = checkpoint.get_text_tokenizer()
        self.frame_samples = self.mimi.frame_size
        assert self.frame_samples == FRAME_SAMPLES, self.frame_samples
        self.defaults = SamplingSettings().updated(_lm_gen_defaults(checkpoint.lm_gen_config))
        self.silence_codes = self._silence_codes()
        self.guidance = Guidance(self.lm, slots, doubled=guidance) if Guidance.applies(self.lm) else None
        if self.persona:
            assert self.guidance is None, "a persona model with conditions is not supported"
            self.gen: BatchedLMGen = PersonaLMGen(self.lm, slots, self.silence_codes)
        else:
            self.gen = BatchedLMGen(self.lm, slots, self.silence_codes, guidance=self.guidance)
        self.randomness = SlotRandomness(slots, 1 + self.lm.dep_q)
        self.settings = [self.defaults for _ in range(slots)]
        self.mimi.streaming_forever(slots)
        self.gen.streaming_forever(slots)
        for slot in range(slots):
            self.configure_slot(slot, self.defaults)
        self.text_pieces = TextPieces(self.tokenizer, slots)   # ids -> text, byte-fallback pieces joined per slot
        use_rows = self.device.type == "cpu" if active_rows is None else active_rows
        gen = self.gen
        extra: list[tuple[object, str]] = [(gen, "slot_temp_audio"), (gen, "slot_temp_text"), (gen, "noise"),
                 (gen, "slot_top_k_audio"), (gen, "slot_top_k_text"), (gen, "force_silence")]
        if isinstance(gen, PersonaLMGen):
            extra += [(gen, "forced"), (gen, "forced_tokens")]
        if self.guidance is not None and self.guidance.doubled:
            extra.append((self.guidance, "coef"))
        self.active_rows = ActiveRows([self.mimi, gen], slots, extra=extra) if use_rows and slots > ROW_BUCKET else None
        # Persona prompts (persona models only): prefill state, the prefix cache, the voice encoder.
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.seconds_per_position = 1e-3          # a prefill's measured cost per prompt position (moving average)
        self.row_states = RowStates(self.lm, gen, slots) if isinstance(gen, PersonaLMGen) else None
        self._voice_mimi: tp.Any = None
        # A prompt must leave most of the attention context to the conversation.
        self.max_prompt_frames = int(self.lm.context or 3000) // 2
        self._pinned = self.device.type == "cuda"
        self._host_inputs: torch.Tensor | None = None

    def _load_mimi(self) -> tp.Any:
        """Mimi with as many codebooks as one speaker has (moshi's loader would give a dep_q 16 model 16)."""
        config = self.checkpoint.lm_config or {}
        persona = config.get("dep_q", 8) == config.get("n_q", 16)
        codebooks = config.get("n_q", 16) // 2 if persona else config.get("dep_q", 8)
        return loaders.get_mimi(self.checkpoint.mimi_weights, self.checkpoint.mimi_config,
                                num_codebooks=codebooks, device=self.device)

    def rows_for(self, in_use: np.ndarray) -> int:
        """How many leading slots a step computes: past the last slot in use, rounded up to a bucket of
        ROW_BUCKET (a few sizes only, and never the small batches whose CPU kernels round differently)."""
        if self.active_rows is None or not in_use.any():
            return self.slots
        last = int(np.flatnonzero(in_use)[-1]) + 1
        return min(self.slots, -(-last // ROW_BUCKET) * ROW_BUCKET)

    def _silence_codes(self) -> torch.Tensor:
        """Mimi's codes for digital silence, once the encoder has settled: [dep_q]."""
        zeros = torch.zeros(1, 1, self.frame_samples, device=self.device)
        with no_compile(), torch.no_grad(), self.mimi.streaming(1):
            for _ in range(6):
                codes = self.mimi.encode(zeros)
        return codes[0, : self.agent_q, 0].clone()

    def configure_slot(self, slot: int, settings: SamplingSettings) -> None:
        """Sets one slot's sampling; a new seed restarts its random stream."""
        self.settings[slot] = settings
        self.gen.slot_temp_audio[slot] = settings.temperature
        self.gen.slot_temp_text[slot] = settings.text_temperature
        self.gen.slot_top_k_audio[slot] = settings.top_k
        self.gen.slot_top_k_text[slot] = settings.text_top_k
        self.randomness.reseed(slot, settings.seed)
        self.randomness.set_widths(slot, settings.text_top_k, settings.top_k)
        if self.guidance is not None:
            self.guidance.set_slot(self.gen._streaming_state, slot, settings.cfg_coef, settings.condition)

    def warmup(self, steps: int = 3) -> None:
        """Runs a few full-batch steps (CUDA graphs are captured here), then wipes every slot."""
        ones = np.ones(self.slots, dtype=bool)
        none = np.zeros(self.slots, dtype=bool)
        pcm = np.zeros((self.slots, self.frame_samples), dtype=np.float32)
        for i in range(steps):
            self.step(StepInput(pcm, ones, ones if i == 0 else none, none, none))
        self.step(StepInput(pcm, none, ones, none, none))

    def step(self, batch: StepInput) -> StepOutput:
        with inference(self.device):
            return self._step(batch)

    def _step(self, batch: StepInput) -> StepOutput:
        if batch.reset.any():
            for slot in np.flatnonzero(batch.reset):
                self.text_pieces.reset(int(slot))
            reset = torch.from_numpy(batch.reset).to(self.device)
            self.mimi.reset_streaming(reset)
            self.gen.reset_streaming(reset)
        rows = self.rows_for(batch.execute)
        if self.active_rows is None or rows == self.slots:
            return self._step_rows(batch, self.slots)
        with self.active_rows.narrowed(rows):
            out = self._step_rows(batch, rows)
        pcm = np.zeros((self.slots, self.frame_samples), dtype=np.float32)
        pcm[:rows] = out.pcm
        has_output = np.zeros(self.slots, dtype=bool)
        has_output[:rows] = out.has_output
        return StepOutput(pcm, out.text + [None] * (self.slots - rows), has_output)

    def _step_rows(self, batch: StepInput, rows: int) -> StepOutput:
        """The step over slots [0, rows): R = rows below (B when every slot is computed).

        The frame and the per-slot flags go to the device packed in one float tensor (a copy that does not
        wait), and the audio, flags and text ids come back in one: the tick's one host sync on CUDA
        (tests/test_host_syncs.py counts them)."""
        sampling = [int(s) for s in np.flatnonzero(batch.execute) if self._samples(int(s))]
        self.gen.noise.copy_(self.draw_sampling(sampling)[:rows], non_blocking=True)
        inputs = self._pack_inputs(batch, rows).to(self.device, non_blocking=True)      # [R, F + 3]
        frames = self.frame_samples
        pcm = inputs[:, None, :frames]                                       # [R, 1, F]
        execute, force_silence, first = (inputs[:, frames + i] > 0.5 for i in range(3))
        self.gen.force_silence.copy_(force_silence)

        self.mimi.set_exec_mask(execute)
        codes = self.mimi.encode(pcm)                                        # [R, K, 1]
        if batch.first[:rows].any():
            # As moshi.server does: the first frame is in the model's past; re-apply the
            # encoder's left padding on the next frame by resetting that slot's Mimi state.
            self.mimi.reset_streaming(first)

        self.gen.set_exec_mask(execute)
        tokens = self.gen.step(codes)                                        # [R, 1 + K, 1]
        assert tokens is not None  # support_out_of_sync: never None, "ungenerated" marks instead
        audio = tokens[:, 1: 1 + self.agent_q, :]
        has_output = (audio >= 0).all(dim=1)[:, 0] & execute                 # [R]
        audio = torch.where(has_output[:, None, None], audio, self.silence_codes[None, :, None])

        self.mimi.set_exec_mask(execute)
        out = self.mimi.decode(audio)[:, 0, :].float()                       # [R, F]
        out = torch.where(has_output[:, None], out, torch.zeros_like(out))
        # text ids (< 2^24) are exact in float32
        packed = torch.cat([out, has_output[:, None].float(), tokens[:, 0, :].float()], dim=1).cpu().numpy()
        has_output_np = packed[:, frames] > 0.5
        text = [self.text_pieces.text(slot, t) if ok else None
                for slot, (t, ok) in enumerate(zip(packed[:, frames + 1].astype(np.int64).tolist(), has_output_np))]
        return StepOutput(np.ascontiguousarray(packed[:, :frames]), text, has_output_np)

    def _pack_inputs(self, batch: StepInput, rows: int) -> torch.Tensor:
        """[R, F + 3] float32 on the host: the frame, then execute, force_silence, first as 0/1. On CUDA a
        pinned buffer, copied without waiting: it is rewritten only after the tick's read-back, which
        waits for the stream, so the copy has long been done."""
        frames = self.frame_samples
        if self._host_inputs is None:
            self._host_inputs = torch.zeros(self.slots, frames + 3, pin_memory=self._pinned)
        host = self._host_inputs[:rows]
        view = host.numpy()
        view[:, :frames] = batch.pcm[:rows]
        view[:, frames] = batch.execute[:rows]
        view[:, frames + 1] = batch.force_silence[:rows]
        view[:, frames + 2] = batch.first[:rows]
        return host

    # --- persona prompts (model thread) --------------------------------------------------------
    def persona_prompt(self, voices: VoiceLibrary | None, voice: str | None, text: str | None) -> PersonaPrompt:
        """The prompt frames of a persona (a voice from `voices`, a role prompt); raises PersonaError."""
        from .persona import PersonaError

        codes = embeddings = None
        voice_id = ""
        if voice is not None:
            if voices is None:
                raise PersonaError("this server has no voices folder (start it with --voices DIR)")
            voice_id, codes, embeddings = voices.voice(voice)
            if embeddings is not None and embeddings.shape[1] != self.lm.dim:
                raise PersonaError(f"voice {voice_id} was computed for a model of width {embeddings.shape[1]}, "
                                   f"this one is {self.lm.dim}")
        tokens = self.tokenizer.encode(wrap_system_tags(text)) if text and text.strip() else []
        prompt = build_prompt(codes, tokens, voice_id, embeddings)
        if prompt.frames > self.max_prompt_frames:
            raise PersonaError(f"the persona prompt is {prompt.frames} frames; this model takes at most "
                               f"{self.max_prompt_frames} (a shorter voice prompt or role)")
        return prompt

    def encode_voice(self, pcm: np.ndarray) -> torch.Tensor:
        """pcm [N] float32 at 24 kHz (N a multiple of 1920) -> Mimi codes [8, N / 1920], on a Mimi of its own."""
        if self._voice_mimi is None:
            self._voice_mimi = self._load_mimi()
        with inference(self.device), self._voice_mimi.streaming(1):
            codes = self._voice_mimi.encode(torch.from_numpy(pcm).to(self.device)[None, None])
        return codes[0, : self.agent_q].cpu()

    def begin_prefill(self, slot: int, prompt: PersonaPrompt, use_cache: bool = True) -> Prefill:
        """A job that fills `slot` with `prompt`, a chunk per `run(budget_s)` call; the slot must not step
        until it is done (the engine holds its frames)."""
        assert self.row_states is not None, "this model takes no persona prompt"
        return Prefill(self, self.row_states, slot, prompt, use_cache)

    def run_prefill(self, prefill: Prefill, budget_s: float) -> bool:
        with inference(self.device):
            return prefill.run(budget_s)

    def step_prompt(self, slot: int, prompt: PersonaPrompt) -> None:
        """PersonaPlex's way: the prompt stepped one frame per (batched, masked) model step; nobody else
        steps meanwhile. Leaves the slot as `begin_prefill` does (kept for comparison: scripts/bench_persona.py)."""
        gen = self.gen
        assert isinstance(gen, PersonaLMGen)
        if prompt.embeddings is not None:
            from .persona import PersonaError

            raise PersonaError("a .pt voice (embeddings) cannot be stepped frame by frame; use --prefill parallel")
        with inference(self.device):
            self.reset_slot(slot)
            execute = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
            execute[slot] = True
            codes = torch.zeros(self.slots, self.agent_q, 1, dtype=torch.long, device=self.device)
            self.gen.force_silence.zero_()
            gen.forced[slot] = True
            try:
                for p in range(prompt.frames):
                    frame = prompt.frame(p).to(self.device)
                    gen.forced_tokens[slot] = frame[: 1 + self.agent_q]
                    codes[slot, :, 0] = frame[1 + self.agent_q:]
                    self.draw_noise(slot)
                    gen.set_exec_mask(execute)
                    gen.step(codes)
            finally:
                gen.forced[slot] = False

    def reset_slot(self, slot: int) -> None:
        mask = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
        mask[slot] = True
        self.text_pieces.reset(slot)
        self.mimi.reset_streaming(mask)
        self.gen.reset_streaming(mask)

    def draw_noise(self, slot: int) -> None:
        sampling = [slot] if self._samples(slot) else []
        self.gen.noise[slot].copy_(self.draw_sampling(sampling)[slot])

    def draw_sampling(self, sampling: list[int]) -> torch.Tensor:
        """Before a step: draws the noise of the slots that sample ([B, 1 + dep_q, MAX_TOP_K], each slot as wide
        as its top-k) and, on CPU, ranks only as many logits as the widest of them asks (CUDA graphs keep
        fixed shapes). Every step sets both, so no width outlives the step it was set for."""
        self.gen.rank_for(self.randomness, sampling)
        return self.randomness.draw(sampling)

    def _samples(self, slot: int) -> bool:
        s = self.settings[slot]
        return s.temperature > 0 or s.text_temperature > 0


def _lm_gen_defaults(lm_gen_config: dict) -> dict:
    """Maps a checkpoint's optional lm_gen_config (moshi's names) to our config names."""
    names = {"temp": "temperature", "temp_text": "text_temperature", "top_k": "top_k", "top_k_text": "text_top_k",
             "cfg_coef": "cfg_coef"}
    return {ours: lm_gen_config[theirs] for theirs, ours in names.items() if theirs in lm_gen_config}
