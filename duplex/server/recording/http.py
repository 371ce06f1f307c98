"""`GET /recordings` and `GET /recordings/{id}/{file}`: the kept conversations, behind the token.

The listing reads every recording's `meta.json` (newest first) off the event loop. A file is served only
when its id is a recording id (one safe path component, no `..`, no separator, no absolute path) of a folder
directly in DIR and the file is one of the three a recording holds; anything else is a 404 that says so.
"""

from __future__ import annotations

import asyncio
import typing as tp

from aiohttp import web

from .store import RECORDED_FILES, RecordingStore

CONTENT_TYPES = {"audio.wav": "audio/wav", "events.jsonl": "application/x-ndjson", "meta.json": "application/json"}


Handler = tp.Callable[[web.Request], tp.Awaitable[web.StreamResponse]]


def add_recording_routes(app: web.Application, store: RecordingStore, guard: tp.Callable[[Handler], Handler]) -> None:
    """The routes over `store`, each wrapped in `guard` (the app's token check)."""
    async def handle_list(request: web.Request) -> web.StreamResponse:
        listing = await asyncio.get_running_loop().run_in_executor(None, store.listing)
        return web.json_response({"recordings": listing})

    async def handle_file(request: web.Request) -> web.StreamResponse:
        return await recorded_file(store, request)

    app.router.add_get("/recordings", guard(handle_list))
    app.router.add_get("/recordings/{id}/{file}", guard(handle_file))


async def recorded_file(store: RecordingStore, request: web.Request) -> web.StreamResponse:
    recording_id, name = request.match_info["id"], request.match_info["file"]
    if name not in RECORDED_FILES:
        raise web.HTTPNotFound(text=f"a recording holds only {', '.join(RECORDED_FILES)}")
    folder = await asyncio.get_running_loop().run_in_executor(None, store.folder, recording_id)
    if folder is None or not (folder / name).is_file():
        raise web.HTTPNotFound(text=f"no recording {recording_id!r} with {name} (GET /recordings lists them)")
    return web.FileResponse(folder / name, headers={"Content-Type": CONTENT_TYPES[name]})
