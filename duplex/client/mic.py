"""`duplex client --mic`: the microphone as 80 ms frames, the assistant's audio to the speaker (sounddevice)."""

from __future__ import annotations

import asyncio
import sys
import threading
import typing as tp

import numpy as np

from ..audio import FRAME_SAMPLES, SAMPLE_RATE, FrameAssembler

MIC_INSTALL_HINT = ("--mic needs the `sounddevice` Python package and the PortAudio library: "
                    "`pip install 'duplex[mic]'` (or `pip install sounddevice`) and, on Debian/Ubuntu, "
                    "`apt-get install libportaudio2`; on macOS `brew install portaudio`.")


def open_mic_or_explain() -> "MicIO | None":
    """A MicIO, or None after telling the user what is missing (sounddevice, PortAudio, a microphone)."""
    try:
        import sounddevice  # lazy: it needs the PortAudio system library just to import
    except (ImportError, OSError) as exc:
        print(f"duplex client: {MIC_INSTALL_HINT} ({exc})", file=sys.stderr)
        return None
    try:
        sounddevice.query_devices(kind="input")
    except Exception as exc:  # PortAudioError / ValueError: no default input device
        print(f"duplex client: no microphone found ({exc}); plug one in or pick a default input device, "
              "or use --input WAV", file=sys.stderr)
        return None
    return MicIO(sounddevice)


class MicIO:
    """Microphone in as 1920-sample frames on an asyncio queue; assistant audio out to the speaker."""

    def __init__(self, sd: tp.Any):
        self._sd = sd
        self._streams: list[tp.Any] = []
        self._lock = threading.Lock()  # the output callback runs on PortAudio's thread
        self._to_play: np.ndarray = np.zeros(0, dtype=np.float32)

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        frames: asyncio.Queue = asyncio.Queue(maxsize=25)
        assembler = FrameAssembler()

        def push(pcm: np.ndarray) -> None:  # on the event loop
            for frame in assembler.push(pcm):
                if frames.full():  # the sender fell behind: drop the oldest rather than lag further
                    frames.get_nowait()
                frames.put_nowait(frame)

        def on_input(indata: np.ndarray, n: int, time_info: tp.Any, status: tp.Any) -> None:
            loop.call_soon_threadsafe(push, indata[:, 0].copy())

        params = dict(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=FRAME_SAMPLES)
        self._streams.append(self._sd.InputStream(callback=on_input, **params))
        try:
            self._streams.append(self._sd.OutputStream(callback=self._on_output, **params))
        except Exception as exc:  # no speaker: the conversation still works, silently
            print(f"duplex client: no audio output ({exc}); the reply will not be played", file=sys.stderr)
        for stream in self._streams:
            stream.start()
        return frames

    def play(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._to_play = np.concatenate([self._to_play, pcm.astype(np.float32, copy=False)])

    def _on_output(self, outdata: np.ndarray, n: int, time_info: tp.Any, status: tp.Any) -> None:
        with self._lock:
            chunk, self._to_play = self._to_play[:n], self._to_play[n:]
        outdata[:len(chunk), 0] = chunk
        outdata[len(chunk):, 0] = 0.0

    def close(self) -> None:
        for stream in self._streams:
            stream.stop()
            stream.close()
        self._streams.clear()
