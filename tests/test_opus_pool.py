"""OpusPool in process: pages from the worker process decode to what was sent, in order, per stream."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import sphn

from duplex.audio import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from duplex.server.opus_pool import EncodeError, OpusPool, audio_encoder


def tones(hz: float, frames: int) -> list[np.ndarray]:
    t = np.arange(frames * FRAME_SAMPLES) / SAMPLE_RATE
    pcm = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return [pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES] for k in range(frames)]


async def test_streams_interleaved_in_one_loop_turn_come_back_as_their_own_ordered_streams() -> None:
    pool = OpusPool(1)
    await pool.start()
    try:
        low, high = pool.encoder(), pool.encoder()
        frames = 12
        low_frames, high_frames = tones(220.0, frames), tones(880.0, frames)
        pages = await asyncio.gather(*(encoder.encode(pcm) for k in range(frames)
                                       for encoder, pcm in ((low, low_frames[k]), (high, high_frames[k]))))
        low_pages, high_pages = pages[0::2], pages[1::2]
        # the very same bytes as encoding on the loop: the pool changes where, not what
        reference = OpusEncoder()
        assert low_pages == [reference.encode(pcm) for pcm in low_frames]
        for stream_pages, hz in ((low_pages, 220.0), (high_pages, 880.0)):
            reader = sphn.OpusStreamReader(SAMPLE_RATE)
            pcm = np.concatenate([reader.append_bytes(page) for page in stream_pages])
            spectrum = np.abs(np.fft.rfft(pcm[-4 * FRAME_SAMPLES:]))
            peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (4 * FRAME_SAMPLES)
            assert abs(peak_hz - hz) < 10, (hz, peak_hz)
        low.close()
        high.close()
        assert pool._workers[0].streams == 0
    finally:
        await pool.stop()


async def test_a_stopped_pool_fails_what_it_still_owes_and_pcm16_never_uses_it() -> None:
    pool = OpusPool(1)
    await pool.start()
    encoder = pool.encoder()
    await pool.stop()
    with pytest.raises(EncodeError):
        await encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.float32))
    pcm16 = audio_encoder(pool, "pcm16")
    assert await pcm16.encode(np.full(4, 0.5, dtype=np.float32)) == np.full(4, 16384, dtype="<i2").tobytes()
