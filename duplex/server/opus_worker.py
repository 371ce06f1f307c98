"""The Opus encoding process of `opus_pool`: one Ogg Opus stream writer per connection, fed in batches.

It imports only numpy and sphn (spawned, it does not load torch). Messages in: a list of
(stream id, pcm float32 [F]) to encode, or (stream id, None) to forget a stream; out: a list of
(stream id, page bytes) in the same order, or (stream id, error text) for a stream that failed.
`None` alone asks the process to end.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import sphn

SAMPLE_RATE = 24000   # duplex.audio's, not imported: that module is not needed to run this process


def serve(connection: tp.Any) -> None:
    """The process's main loop over one multiprocessing connection."""
    writers: dict[int, tp.Any] = {}
    while True:
        batch = connection.recv()
        if batch is None:
            return
        replies: list[tuple[int, bytes | str]] = []
        for stream, pcm in batch:
            if pcm is None:
                writers.pop(stream, None)
                continue
            try:
                writer = writers.get(stream)
                if writer is None:
                    writer = writers[stream] = sphn.OpusStreamWriter(SAMPLE_RATE)
                replies.append((stream, bytes(writer.append_pcm(np.clip(pcm, -1.0, 1.0)))))
            except Exception as exc:  # noqa: BLE001 - reported to the connection that owns the stream
                replies.append((stream, f"{type(exc).__name__}: {exc}"))
        if replies:
            connection.send(replies)
