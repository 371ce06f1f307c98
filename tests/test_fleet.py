"""Several workers behind a real HAProxy (docs/deploy.md): real processes on loopback, tiny preset, CPU.

`duplex serve --workers 2` (the supervisor) starts two workers of 2 slots; the test writes HAProxy's
configuration with `duplex lb-config` and starts HAProxy itself in front of them. Then, in one run:
2 x 2 conversations through the balancer are all served, two on each worker; a fifth is refused with a
503 whose body is the protocol's `capacity` error; a worker killed (SIGKILL) mid-conversation closes its
two clients, while the other worker's conversations go on; new conversations go to the survivor; the
supervisor restarts the dead worker on its port, HAProxy's check sees it, and new conversations land on it;
SIGTERM to the supervisor drains and stops every worker (1001 through the balancer) and it exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import sys
import typing as tp
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from duplex import cli
from duplex.client import DuplexClient
from duplex.client.connection import HandshakeRefused
from duplex.server.process import REPO

from .helpers import frames_of, health, send_frames, wait_until_health

SLOTS = 2
FRAMES = 4   # frames each conversation sends per round (80 ms each)


def haproxy_binary() -> str:
    path = shutil.which("haproxy")
    if path is None:
        if os.environ.get("DUPLEX_REQUIRE_HAPROXY"):
            pytest.fail("haproxy is required here (DUPLEX_REQUIRE_HAPROXY): apt-get install haproxy")
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run installs it)")
    return path


class Lines:
    """The lines of a child's stream, read as they come; `expect` waits for one that matches."""

    def __init__(self, name: str, stream: asyncio.StreamReader, log: list[str]):
        self.name = name
        self.stream = stream
        self.log = log
        self.seen: list[str] = []
        self.changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self.stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.log.append(f"[{self.name}] {text}")
            async with self.changed:
                self.seen.append(text)
                self.changed.notify_all()

    async def expect(self, match: tp.Callable[[str], bool], what: str, timeout: float = 60.0, after: int = 0) -> str:
        """The first line from index `after` on that matches (waits for it)."""
        async def found() -> str:
            async with self.changed:
                await self.changed.wait_for(lambda: any(match(t) for t in self.seen[after:]))
                return next(t for t in self.seen[after:] if match(t))
        try:
            return await asyncio.wait_for(found(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s; output:\n" + "\n".join(self.log[-60:])) from None


async def spawn(*argv: str, pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                cwd=REPO, pass_fds=pass_fds,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def conversation(url: str, frames: list[np.ndarray]) -> DuplexClient:
    """A duplex conversation through `url`, started and answered (one assistant frame per user frame)."""
    client = await DuplexClient.connect(url, mode="duplex", codec="pcm16")
    await client.start()
    await client.wait_for("status", timeout=10)
    await talk(client, frames)
    return client


async def talk(client: DuplexClient, frames: list[np.ndarray]) -> None:
    before = len(client.audio)
    await send_frames(client, frames)
    await client.wait_audio_frames(before + len(frames), timeout=20)


async def closed(client: DuplexClient, timeout: float) -> None:
    await client.wait_until(lambda: True if client.closed else None, timeout, "the socket's close")


async def active(url: str) -> int:
    return (await health(url))["engines"]["duplex"]["active"]


async def upgrade(url: str) -> tuple[int, str]:
    """A bare WebSocket upgrade through the balancer: its HTTP status, and the error code of a refusal's body."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
            body = await response.json(content_type=None) if response.status != 101 else {}
            return response.status, body.get("code", "")


async def test_two_workers_behind_haproxy(tmp_path: Path, speech: np.ndarray):
    haproxy = haproxy_binary()
    frames = frames_of(speech, FRAMES)
    log: list[str] = []
    fleet = await spawn(sys.executable, "-m", "duplex", "serve", "--workers", "2", "--slots", str(SLOTS),
                        "--no-cascade", "--port", "0", "--drain-s", "1", "--opus-workers", "0",
                        "--quiet-progress", "--static", "none")
    assert fleet.stdout is not None and fleet.stderr is not None
    out, err = Lines("fleet", fleet.stdout, log), Lines("fleet!", fleet.stderr, log)
    front = socket.create_server(("127.0.0.1", 0))   # HAProxy's socket, handed down (bind fd@N)
    balancer = None
    clients: list[DuplexClient] = []
    everyone: list[DuplexClient] = []   # every client opened, closed at the end
    try:
        await out.expect(lambda t: t.startswith("DUPLEX_READY "), "fleet ready")
        announced = [t.split() for t in out.seen if t.startswith("DUPLEX_WORKER ")]   # index url slots pid
        workers = {int(w[1]): w[2] for w in announced}
        pids = {int(w[1]): int(w[4]) for w in announced}
        assert sorted(workers) == [0, 1]
        config = tmp_path / "haproxy.cfg"
        assert cli.main(["lb-config", "--bind", f"fd@{front.fileno()}", "--queue-timeout-s", "0.5",
                         "--check-interval-ms", "200", "-o", str(config),
                         *[a for i in (0, 1) for a in ("--worker", f"{workers[i].split('//')[1]}:{SLOTS}")]]) == 0
        balancer = await spawn(haproxy, "-db", "-f", str(config), pass_fds=(front.fileno(),))
        assert balancer.stderr is not None
        lb_err = Lines("haproxy", balancer.stderr, log)
        url = f"http://127.0.0.1:{front.getsockname()[1]}"

        # 2 x slots conversations through the balancer: all served, spread over both workers
        clients = list(await asyncio.gather(*[conversation(url, frames) for _ in range(2 * SLOTS)]))
        everyone += clients
        assert [await active(workers[i]) for i in (0, 1)] == [SLOTS, SLOTS]

        # one more: HAProxy's queue times out, 503 with the protocol's capacity error as the body
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                      "Sec-WebSocket-Version": "13",
                                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
                assert response.status == 503
                body = await response.json(content_type=None)
        assert body["type"] == "error" and body["code"] == "capacity"
        with pytest.raises(HandshakeRefused) as refused:
            await DuplexClient.connect(url, mode="duplex")
        assert refused.value.code == 503 and "full" in str(refused.value)
        # an engine that no worker serves (this fleet runs --no-cascade) is refused by the balancer at once
        assert await upgrade(f"{url}/ws?mode=cascade") == (501, "unsupported")

        # kill worker 1 mid-conversation: exactly its two clients are closed, the others go on
        restarts_seen = len(out.seen)
        os.kill(pids[1], signal.SIGKILL)
        waits = [asyncio.create_task(closed(c, 15)) for c in clients]
        try:
            for first in itertools.islice(asyncio.as_completed(waits), SLOTS):
                await first
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        cut = [c for c in clients if c.closed]
        kept = [c for c in clients if not c.closed]
        assert len(cut) == SLOTS and len(kept) == SLOTS
        for c in cut:
            assert c.close_code == 1006 and c.close_reason   # no close frame from a dead process: the client says so
        await asyncio.gather(*[talk(c, frames) for c in kept])   # the survivor's conversations are served

        # the fleet has one worker now, full: a new conversation is refused; free a slot and it lands there
        with pytest.raises(HandshakeRefused):
            await DuplexClient.connect(url, mode="duplex")
        await kept[0].close()
        await wait_until_health(workers[0], lambda s: s["engines"]["duplex"]["active"] == SLOTS - 1, "a free slot")
        kept[0] = await conversation(url, frames)
        everyone.append(kept[0])
        assert await active(workers[0]) == SLOTS

        # the supervisor restarts worker 1 on its port; HAProxy's check sees it; new conversations go there
        line = await out.expect(lambda t: t.startswith("DUPLEX_WORKER 1 "), "worker 1 restarted", after=restarts_seen)
        assert line.split()[2] == workers[1]
        await err.expect(lambda t: "w1 (pid" in t and "exited with code -9" in t, "the supervisor's log of the death")
        await lb_err.expect(lambda t: "duplex/w1 is UP" in t, "HAProxy seeing worker 1 back")
        clients = kept + list(await asyncio.gather(*[conversation(url, frames) for _ in range(SLOTS)]))
        everyone += clients[len(kept):]
        assert [await active(workers[i]) for i in (0, 1)] == [SLOTS, SLOTS]
        await asyncio.gather(*[talk(c, frames) for c in kept])   # never cut on the worker that was not killed
        assert not any(c.closed for c in clients)

        # SIGTERM: every worker drains (1 s), closes its sockets 1001, and the supervisor exits 0
        fleet.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fleet.wait(), 30) == 0
        await asyncio.gather(*[closed(c, 10) for c in clients])
        assert {(c.close_code, c.close_reason) for c in clients} == {(1001, "server shutting down")}
    finally:
        for c in everyone:
            await c.close()
        for process in (fleet, balancer):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        front.close()


def test_one_worker_per_gpu_sees_only_its_gpu_and_gets_the_other_flags():
    from duplex.server.fleet import Fleet, FleetError, parse_gpus
    from duplex.server.options import parse_serve_options

    options = parse_serve_options(["--gpus", "2,3", "--slots", "16", "--no-cascade", "--port", "9100",
                                   "--drain-s", "60", "--threads", "4"])
    fleet = Fleet(options)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in fleet.workers] == ["2", "3"]
    for i, worker in enumerate(fleet.workers):
        argv = worker.argv()
        assert argv[1:4] == ["-m", "duplex", "serve"]
        assert "--gpus" not in argv and "--workers" not in argv and "--haproxy" not in argv
        assert argv[argv.index("--slots") + 1] == "16" and "--no-cascade" in argv
        assert argv[argv.index("--drain-s") + 1] == "60.0" and argv[argv.index("--threads") + 1] == "4"
        assert argv[argv.index("--port") + 1] == str(9100 + i)   # without --haproxy: --port, --port+1, ...
        assert argv[argv.index("--max-connections") + 1] == "16"   # the worker refuses past its slots too
    with pytest.raises(FleetError, match="distinct device numbers"):
        parse_gpus("0,0")
    with pytest.raises(FleetError, match="distinct device numbers"):
        parse_gpus("gpu0")


async def test_the_supervisor_starts_haproxy_itself_and_restarts_it_on_the_same_socket(speech: np.ndarray):
    haproxy_binary()
    frames = frames_of(speech, FRAMES)
    log: list[str] = []
    fleet = await spawn(sys.executable, "-m", "duplex", "serve", "--workers", "1", "--slots", "1", "--haproxy",
                        "--lb-queue-timeout-s", "0.3", "--no-cascade", "--port", "0", "--opus-workers", "0",
                        "--quiet-progress", "--static", "none")
    assert fleet.stdout is not None and fleet.stderr is not None
    out, err = Lines("fleet", fleet.stdout, log), Lines("fleet!", fleet.stderr, log)
    everyone: list[DuplexClient] = []
    try:
        url = (await out.expect(lambda t: t.startswith("DUPLEX_READY "), "fleet ready")).split()[1]
        started = await err.expect(lambda t: "haproxy: started (pid" in t, "HAProxy started")
        haproxy_pid = int(started.split("pid ")[1].rstrip(")"))
        everyone.append(await conversation(url, frames))
        with pytest.raises(HandshakeRefused) as refused:   # one slot in the fleet: the second is refused
            await DuplexClient.connect(url, mode="duplex")
        assert refused.value.code == 503

        # HAProxy dies: its connections go; the supervisor restarts it on the socket it made, so a client that
        # connects meanwhile waits in the socket's backlog and is served once the new HAProxy accepts
        mark = len(err.seen)
        os.kill(haproxy_pid, signal.SIGKILL)
        await closed(everyone[0], 10)
        assert everyone[0].close_code == 1006
        everyone.append(await conversation(url, frames))
        await err.expect(lambda t: "haproxy (pid" in t and "restarting" in t, "the restart logged", after=mark)

        fleet.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fleet.wait(), 30) == 0
        await closed(everyone[1], 10)
        assert (everyone[1].close_code, everyone[1].close_reason) == (1001, "server shutting down")
    finally:
        for c in everyone:
            await c.close()
        if fleet.returncode is None:
            fleet.kill()
            await fleet.wait()


class PopenSpy:
    """Calls `then` once, the moment the interpreter is about to start a process whose argv holds `marker` (the
    `subprocess.Popen` audit event: a real hook into the real call, nothing replaced)."""

    armed: "PopenSpy | None" = None
    installed = False

    def __init__(self, marker: str, then: tp.Callable[[], None]):
        self.marker, self.then = marker, then
        if not PopenSpy.installed:
            sys.addaudithook(PopenSpy._hook)
            PopenSpy.installed = True

    def __enter__(self) -> "PopenSpy":
        PopenSpy.armed = self
        return self

    def __exit__(self, *exc: object) -> None:
        PopenSpy.armed = None

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        spy = PopenSpy.armed
        if spy is not None and event == "subprocess.Popen" and spy.marker in " ".join(map(str, args[1])):
            PopenSpy.armed = None
            spy.then()


async def test_a_worker_respawned_while_the_fleet_stops_is_stopped_too():
    """Issue 24 item 13: the fleet told to stop while a dead worker's replacement is being started. The
    replacement was never signalled (the supervisor signalled the dead process) and the supervisor hung."""
    from duplex.server.fleet import Fleet
    from duplex.server.options import parse_serve_options

    fleet = Fleet(parse_serve_options(["--workers", "1", "--slots", "1", "--no-cascade", "--port", "0",
                                       "--opus-workers", "0", "--quiet-progress", "--static", "none"]))
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(fleet.run())
    worker = fleet.workers[0]
    try:
        await asyncio.wait_for(fleet.all_ready.wait(), 120)
        first = worker.process
        assert first is not None
        with PopenSpy("duplex", fleet.stopping.set):   # the stop comes while the replacement is being started
            os.kill(first.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(run), 60)
        assert worker.process is not first and worker.starts == 2   # the replacement did start, and is gone
        assert worker.process is not None and worker.process.returncode is not None
    finally:
        if not run.done():
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()
            await asyncio.wait_for(run, 60)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def test_a_second_sigterm_stops_the_workers_at_once(speech: np.ndarray):
    """Issue 24 item 13: the first SIGTERM drains (here up to 300 s, a conversation open); a second is forwarded
    to the workers, which stop at once (as one `duplex serve` does), so the fleet exits long before the drain."""
    log: list[str] = []
    fleet = await spawn(sys.executable, "-m", "duplex", "serve", "--workers", "1", "--slots", "1", "--no-cascade",
                        "--port", "0", "--drain-s", "300", "--opus-workers", "0", "--quiet-progress", "--static",
                        "none")
    assert fleet.stdout is not None and fleet.stderr is not None
    out, err = Lines("fleet", fleet.stdout, log), Lines("fleet!", fleet.stderr, log)
    client: DuplexClient | None = None
    try:
        url = (await out.expect(lambda t: t.startswith("DUPLEX_READY "), "fleet ready")).split()[1]
        client = await conversation(url, frames_of(speech, FRAMES))
        fleet.send_signal(signal.SIGTERM)
        await err.expect(lambda t: t.startswith("[w0]") and "draining" in t, "the worker draining")
        fleet.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fleet.wait(), 60) == 0, "\n".join(log[-40:])
        await closed(client, 10)
        assert client.close_code == 1001
    finally:
        if client is not None:
            await client.close()
        if fleet.returncode is None:
            fleet.kill()
            await fleet.wait()

