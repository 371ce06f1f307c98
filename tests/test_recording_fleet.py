"""A fleet's workers record into one DIR (`duplex serve --workers N --record DIR --record-max-gb G`): the
disk cap of one worker never deletes a recording another worker is still writing, and a recording left
open by a worker that died (SIGKILL) is deleted like a completed one.

The other worker is a second process with its own `RecordingStore` on the same DIR, recording through a
`SocketRecorder` exactly as a worker's sockets do; this process is the worker whose cap runs.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap

from duplex.server.process import REPO

from .test_recording import converse, folders, metric, recording

OTHER_WORKER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from duplex.server.recording import RecordingStore

    async def main():
        store = RecordingStore(sys.argv[1])
        await store.start()
        recorder = store.for_socket("ws")
        recorder.begin("otherworker", "duplex", {"seed": 1})
        for _ in range(20):
            recorder.user_audio(np.full(1920, 0.1, dtype=np.float32))
        await store.synced()
        print(recorder.segment.id, flush=True)     # open, and staying open until stdin closes
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
""")


async def test_a_workers_cap_spares_another_workers_open_recording_not_a_dead_ones(tmp_path):
    one = 2 * 4 * 1920 * 2                    # bytes of audio in a 4-frame stereo recording
    async with recording(tmp_path, max_bytes=int(2.5 * one) + 3 * 4096) as (client, store):
        other = await asyncio.create_subprocess_exec(sys.executable, "-c", OTHER_WORKER, str(store.directory),
                                                     cwd=REPO, stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE)
        try:
            assert other.stdout is not None
            open_id = (await asyncio.wait_for(other.stdout.readline(), 60)).decode().strip()
            assert open_id and (store.directory / open_id).is_dir(), "the other worker's recording is open"
            for k in range(3):   # this worker's recordings push DIR over the cap: its cap runs after each
                ws, _ = await converse(client, 4, seed=k)
                await ws.send_json({"type": "stop"})
                await ws.close()
                await store.synced()
            names = [p.name for p in folders(store)]
            assert open_id in names, "this worker's cap deleted a recording the other worker is writing"
            assert open_id in [entry["id"] for entry in store.listing()]   # /recordings lists the fleet's
            assert await metric(client, "duplex_recordings_deleted_total") >= 1   # its own oldest went instead
        finally:
            other.kill()     # SIGKILL: the other worker dies with its recording open
            await other.wait()
        ws, _ = await converse(client, 4, seed=9)
        await ws.send_json({"type": "stop"})
        await ws.close()
        await store.synced()
        assert open_id not in [p.name for p in folders(store)], "a dead worker's recording is never freed"
