"""Kyutai streaming STT over a fixed batch of slots: one batched Mimi encode -> LMGen step per tick.

The STT is a delayed-streams LM with no depformer (dep_q 0): each 80 ms step it reads the 32 Mimi
codes of the user's frame and writes one text token, which describes the audio heard
`audio_delay_seconds` earlier (0.5 s for stt-1b-en_fr). Its text stream is mostly padding (3);
"end of padding" (0) marks a word boundary, and a word's pieces follow it. Its extra heads give,
every step, the probability that the user has paused for good (head 2, class 0, as Kyutai's own
clients read it).

Like MoshiBatch: the batch shape never changes, slots without a frame are masked out
(`set_exec_mask`), and `reset_streaming(mask)` wipes only the slots asked. Decoding is greedy, so
a slot's output depends only on its own audio. Runs on the model worker thread only: no locking.
Shapes: B = slots, F = 1920 samples (80 ms), K = 32 codebooks.
"""

from __future__ import annotations

import math
import time
import typing as tp
from dataclasses import dataclass, field

import numpy as np
import torch
from moshi.models import LMGen, loaders

from ..audio import FRAME_MS, FRAME_SAMPLES
from .inference import inference

# Kyutai's clients read the end-of-turn ("pause") probability as class 0 of the third extra head.
PAUSE_HEAD = 2


@dataclass
class SttWord:
    text: str
    start_ms: int   # on the slot's own audio clock (0 = first sample after its reset)
    end_ms: int     # when the model finished writing the word: a lower bound of its spoken end


@dataclass
class SttStepInput:
    pcm: np.ndarray       # [B, F] float32, zeros for slots without a frame
    execute: np.ndarray   # [B] bool: slot has a frame this tick
    reset: np.ndarray     # [B] bool: wipe the slot's state before this tick


@dataclass
class SttStepOutput:
    words: list[list[SttWord]]  # [B] words completed this step
    text: list[str | None]      # [B] new text this step (a sentencepiece piece, "▁" as a space)
    pause_prob: np.ndarray      # [B] float32 end-of-turn probability; NaN: no frame, or no such head
    step_ms: float              # wall time of the whole batched step


@dataclass
class SttFlushOutput:
    words: list[SttWord]        # the slot's remaining words, the pending one closed
    text: str                   # the text written while flushing


@dataclass
class _SlotText:
    """One slot's host-side state: its step count and the word being written."""
    steps: int = 0                     # model steps since reset, silence prefix included
    needs_prefix: bool = True          # the silence prefix is still to be fed
    word_ids: list[int] = field(default_factory=list)
    word_start_ms: int = 0


class SttModel(tp.Protocol):
    """The seam between the cascade's user side and its recogniser: `SttBatch` in this process, or
    `stt_process.SttProcess`, the same batch stepped in a child process."""

    slots: int
    flush_frames: int     # steps of silence after the last frame that bring out the text of all of it
    has_pause: bool       # whether the model gives an end-of-turn ("pause") probability

    def step(self, batch: SttStepInput) -> SttStepOutput:
        """One batched step (model thread)."""
        ...

    def health(self) -> dict:
        ...

    def close(self) -> None:
        ...


class SttBatch:
    """Loads Mimi + the STT LM once and transcribes `slots` independent streams in one batched step."""

    def __init__(self, checkpoint: loaders.CheckpointInfo, slots: int, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.slots = slots
        self.device = torch.device(device)
        self.mimi = checkpoint.get_mimi(device=self.device)
        self.lm = checkpoint.get_moshi(device=self.device, dtype=dtype)
        if self.lm.dep_q != 0:
            raise ValueError(f"not a speech-to-text checkpoint: dep_q={self.lm.dep_q} (an STT generates no audio)")
        self.tokenizer = checkpoint.get_text_tokenizer()
        self.frame_samples = self.mimi.frame_size
        assert self.frame_samples == FRAME_SAMPLES, self.frame_samples
        self._configure_delays(checkpoint.stt_config)
        self.has_pause = len(self.lm.extra_heads) > PAUSE_HEAD
        self._pieces = [self.tokenizer.id_to_piece(i) for i in range(self.tokenizer.vocab_size())]
        # unk/bos/eos/pad and the model's own padding and word-boundary ids are never text.
        self._special = {0, 1, 2, 3, self.lm.text_padding_token_id, self.lm.end_of_text_padding_id}
        self.gen = LMGen(self.lm, use_sampling=False, support_out_of_sync=True)  # greedy, as Kyutai runs it
        self.mimi.streaming_forever(slots)
        self.gen.streaming_forever(slots)
        self.state = [_SlotText() for _ in range(slots)]

    def _configure_delays(self, stt_config: dict) -> None:
        """The real defaults when a config omits them: Kyutai's scripts fall back to these too."""
        frame_rate = self.mimi.frame_rate
        delay_s = float(stt_config.get("audio_delay_seconds", 0.5))
        prefix_s = float(stt_config.get("audio_silence_prefix_seconds", 0.0))
        self.delay_ms = delay_s * 1000.0
        # Text written before this many steps (prefix included) describes audio before t = 0.
        self.prefix_frames = math.ceil(prefix_s * frame_rate)
        self.release_frames = self.prefix_frames + int(delay_s * frame_rate)
        # Steps of silence after the last frame that bring out the text of all of it.
        self.flush_frames = math.ceil(delay_s * frame_rate)

    def warmup(self, steps: int = 2) -> None:
        """Runs a few full-batch steps (CUDA graphs are captured here), then wipes every slot."""
        ones = np.ones(self.slots, dtype=bool)
        none = np.zeros(self.slots, dtype=bool)
        pcm = np.zeros((self.slots, self.frame_samples), dtype=np.float32)
        for i in range(steps):
            self.step(SttStepInput(pcm, ones, ones if i == 0 else none))
        self.step(SttStepInput(pcm, none, ones))

    def health(self) -> dict:
        return {"process": None}   # runs in the server's own process

    def close(self) -> None:
        pass

    def step(self, batch: SttStepInput) -> SttStepOutput:
        with inference(self.device):
            return self._step(batch)

    def flush(self, slot: int) -> SttFlushOutput:
        """The slot's audio has ended: feeds it `audio_delay` of silence (this slot only; the others
        do not move) so the text of its last frames comes out, then closes the pending word.
        The slot's clock moves on by that silence; reset it to start a new stream at 0."""
        state = self.state[slot]
        words: list[SttWord] = []
        text: list[str] = []
        if state.needs_prefix:  # never heard anything since its reset
            return SttFlushOutput(words, "")
        execute = np.zeros(self.slots, dtype=bool)
        execute[slot] = True
        pcm = np.zeros((self.slots, self.frame_samples), dtype=np.float32)
        with inference(self.device):
            for _ in range(self.flush_frames):
                tokens, _ = self._model_step(pcm, execute)
                piece = self._advance(slot, tokens[slot], words)
                if piece is not None:
                    text.append(piece)
        words += self._close_word(state, self._clock_ms(state.steps))
        return SttFlushOutput(words, "".join(text))

    def _step(self, batch: SttStepInput) -> SttStepOutput:
        started = time.perf_counter()
        if batch.reset.any():
            self._reset(batch.reset)
        self._feed_silence_prefix(batch.execute)
        tokens, pause = self._model_step(batch.pcm, batch.execute)
        words: list[list[SttWord]] = [[] for _ in range(self.slots)]
        text: list[str | None] = [None] * self.slots
        for slot in np.flatnonzero(batch.execute):
            text[slot] = self._advance(int(slot), tokens[slot], words[slot])
        return SttStepOutput(words, text, pause, (time.perf_counter() - started) * 1000.0)

    def _reset(self, mask: np.ndarray) -> None:
        reset = torch.from_numpy(mask).to(self.device)
        self.mimi.reset_streaming(reset)
        self.gen.reset_streaming(reset)
        for slot in np.flatnonzero(mask):
            self.state[slot] = _SlotText()

    def _feed_silence_prefix(self, execute: np.ndarray) -> None:
        """Slots that start a stream this tick first hear `audio_silence_prefix_seconds` of silence,
        as the model was trained (others are masked out and do not move). Their outputs are dropped:
        they describe audio before the stream's start."""
        starting = execute & np.array([s.needs_prefix for s in self.state])
        for slot in np.flatnonzero(starting):
            self.state[slot].needs_prefix = False
        if self.prefix_frames == 0 or not starting.any():
            return
        pcm = np.zeros((self.slots, self.frame_samples), dtype=np.float32)
        for _ in range(self.prefix_frames):
            self._model_step(pcm, starting)
        for slot in np.flatnonzero(starting):
            self.state[slot].steps += self.prefix_frames

    def _model_step(self, pcm: np.ndarray, execute: np.ndarray) -> tuple[list[int], np.ndarray]:
        """One batched encode + LM step for the slots in `execute`: text ids [B], pause probs [B]."""
        mask = torch.from_numpy(execute).to(self.device)
        frames = torch.from_numpy(pcm).to(self.device)[:, None, :]          # [B, 1, F]
        self.mimi.set_exec_mask(mask)
        codes = self.mimi.encode(frames)                                    # [B, K, 1]
        self.gen.set_exec_mask(mask)
        out = self.gen.step_with_extra_heads(codes)
        assert out is not None  # support_out_of_sync: never None
        tokens, heads = out                                                 # [B, 1, 1], [B, 1, 6] each
        pause = np.full(self.slots, np.nan, dtype=np.float32)
        if self.has_pause:
            pause[:] = heads[PAUSE_HEAD][:, 0, 0].float().cpu().numpy()
            pause[~execute] = np.nan
        return tokens[:, 0, 0].tolist(), pause

    def _advance(self, slot: int, token: int, words: list[SttWord]) -> str | None:
        """Counts one step of `slot` and reads its text token: returns the new text (if any) and
        appends the words this token completes."""
        state = self.state[slot]
        state.steps += 1
        if state.steps <= self.release_frames:
            return None  # text about audio before the stream started (silence prefix, delay)
        now_ms = self._clock_ms(state.steps - 1)
        if token in self._special or not 0 <= token < len(self._pieces):
            words += self._close_word(state, now_ms)
            return None
        piece = self._pieces[token]
        if piece.startswith("\u2581"):  # a piece that starts a word also ends the previous one
            words += self._close_word(state, now_ms)
        if not state.word_ids:
            state.word_start_ms = now_ms
        state.word_ids.append(token)
        return piece.replace("\u2581", " ")

    def _close_word(self, state: _SlotText, end_ms: int) -> list[SttWord]:
        if not state.word_ids:
            return []
        text = self.tokenizer.decode(state.word_ids).strip()
        state.word_ids = []
        return [SttWord(text, state.word_start_ms, max(end_ms, state.word_start_ms))] if text else []

    def _clock_ms(self, step: int) -> int:
        """Time on the slot's audio clock that the text of model step `step` (0-based) is about."""
        return max(0, round((step - self.prefix_frames) * FRAME_MS - self.delay_ms))
