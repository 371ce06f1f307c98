"""Small helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from duplex.client import DuplexClient, FramePacer, split_frames

GREEDY = {"temperature": 0, "text_temperature": 0}


async def send_frames(client: DuplexClient, frames: list[np.ndarray], realtime: bool = False) -> None:
    pacer = FramePacer(start=time.monotonic())
    for k, frame in enumerate(frames):
        if realtime:
            await pacer.wait(k)
        await client.send_audio(frame)


async def health(http_url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url + "/health") as response:
            assert response.status == 200
            return await response.json()


def frames_of(pcm: np.ndarray, n: int | None = None) -> list[np.ndarray]:
    frames = split_frames(pcm)
    return frames if n is None else frames[:n]


async def wait_until_health(http_url: str, check, what: str, timeout: float = 10.0) -> dict:
    """Polls /health until `check(state)` holds; fails the test (AssertionError) past `timeout`.

    The timeout is a bound on a server-side release that normally takes one event-loop turn or one
    tick; 10 s is generous for a loaded shared machine."""
    deadline = time.monotonic() + timeout
    while True:
        state = await health(http_url)
        if check(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never showed {what} within {timeout} s; last: {state}")
        await asyncio.sleep(0.05)


async def wait_until_idle(http_url: str, engine: str = "duplex", timeout: float = 10.0) -> dict:
    """Polls /health until no slot of `engine` is active; fails the test if that takes over `timeout`."""
    return await wait_until_health(http_url, lambda state: state["engines"][engine]["active"] == 0,
                                   f"{engine} idle (active == 0)", timeout)
