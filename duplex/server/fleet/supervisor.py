"""`duplex serve --gpus 0,1,2,3` / `--workers N`: one `duplex serve` worker process per GPU (or N on CPU), supervised.

One `duplex serve` process is one event loop and one model per engine on one device. A machine with several
GPUs runs one worker per GPU, each a plain `duplex serve` child (`CUDA_VISIBLE_DEVICES` set to its GPU,
its own models, slots and port) started here in parallel. The supervisor does only the glue:

- restarts a worker that dies (logged, with a backoff that doubles up to 30 s, reset after a minute up);
  a worker that fails its very first start stops the whole fleet (a bad flag would fail on every try);
- prefixes each worker's log lines with `[w<i>]`, prints `DUPLEX_WORKER <i> <url> <slots> <pid>` each time a
  worker (re)starts serving (scripts and tests read it), and `DUPLEX_READY <url>` once all serve;
- with `--haproxy`, starts HAProxy (the config of `duplex lb-config`: a backend per engine, each worker's
  duplex and cascade slots read from its /health) on `--port` in front of the workers (on the next ports),
  and supervises it the same way;
- SIGTERM/SIGINT: SIGTERM to every worker (each drains for `--drain-s`, then closes its sockets with 1001),
  a worker being restarted included (its new process is signalled as soon as it exists), waits for them all,
  then stops HAProxy; a second signal is passed on to the workers, which then stop at once.

The load balancing itself is HAProxy's (haproxy.py); nothing here routes a conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import typing as tp
from dataclasses import replace
from pathlib import Path

import aiohttp

from ..options import TOKEN_ENV, OptionsError, ServeOptions, access_token
from .haproxy import BalancerSettings, WorkerAddress, render

log = logging.getLogger("duplex.supervisor")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0     # a worker up this long has its backoff reset
READY_TIMEOUT_S = 600.0   # model download and load on a first start can be long
STOP_GRACE_S = 30.0       # after the drain: how long a worker may take to exit before it is killed

class FleetError(RuntimeError):
    """The fleet cannot start: a worker failed its first start, or HAProxy is missing or refused its config."""


def parse_gpus(text: str) -> list[str]:
    if text == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise FleetError("--gpus all: no CUDA device found (on CPU use --workers N)")
        return [str(i) for i in range(count)]
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise FleetError(f"--gpus {text!r}: expected 'all' or distinct device numbers, e.g. 0,1,2,3")
    return gpus


def worker_argv(options: ServeOptions, *, host: str, port: int, threads: int, max_connections: int) -> list[str]:
    """The command line of one worker: the fleet's options less its own flags, on its own address and share.
    Never the token (`ps` shows every user a command line): a worker gets it in `$DUPLEX_TOKEN` (`Fleet._worker`)."""
    worker = replace(options, gpus=None, workers=0, haproxy=False, lb_queue_timeout_s=ServeOptions.lb_queue_timeout_s,
                     token=None, token_file=None,
                     host=host, port=port, threads=threads, max_connections=max_connections)
    return [sys.executable, "-m", "duplex", "serve", *worker.to_argv()]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, so no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


OnReady = tp.Callable[["Child"], tp.Awaitable[None]]


class Child:
    """One supervised process: started, its output relayed, ready once a line matches, restarted by `keep`."""

    def __init__(self, name: str, argv: tp.Callable[[], list[str]], env: dict[str, str],
                 ready_line: tp.Callable[[str], bool] | None, pass_fds: tuple[int, ...] = ()):
        self.name = name
        self.argv = argv
        self.env = env
        self.ready_line = ready_line   # None: ready once started
        self.pass_fds = pass_fds
        self.process: asyncio.subprocess.Process | None = None
        self.ready_text = ""            # the line that said it serves
        self.ever_ready = False
        self.starts = 0
        self.stop_signal: int | None = None   # once stopping: the signal every process of it gets, even one starting now

    async def run_once(self, on_ready: OnReady) -> int:
        """Starts the process and waits for its exit; `on_ready` when its ready line comes."""
        self.starts += 1
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
            start_new_session=True,   # a terminal's Ctrl+C reaches the supervisor only; it stops the workers
            preexec_fn=_die_with_parent, pass_fds=self.pass_fds)
        log.info("%s: started (pid %d)", self.name, self.process.pid)
        if self.stop_signal is not None:   # told to stop while it was being started: it stops too
            self.signal(self.stop_signal)
        if self.ready_line is None:
            self.ever_ready = True
            await on_ready(self)
        assert self.process.stdout is not None and self.process.stderr is not None
        relays = [asyncio.create_task(self._relay(self.process.stdout, on_ready)),
                  asyncio.create_task(self._relay(self.process.stderr, on_ready))]
        try:
            code = await self.process.wait()
        finally:
            await asyncio.gather(*relays, return_exceptions=True)   # they end at EOF, once the process is gone
        return code

    async def _relay(self, stream: asyncio.StreamReader, on_ready: OnReady) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if self.ready_line is not None and self.ready_line(text):
                self.ready_text = text
                self.ever_ready = True
                try:
                    await on_ready(self)
                except Exception:   # the relay must go on: a pipe nobody reads would block the child
                    log.exception("%s: handling its ready line failed", self.name)
            elif not text.startswith("DUPLEX_READY"):
                sys.stderr.write(f"[{self.name}] {text}\n")

    def stop(self, sig: int) -> None:
        """`sig` to the process now and to any process of it started from now on (a restart under way)."""
        self.stop_signal = sig
        self.signal(sig)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Fleet:
    """The workers (and HAProxy) of one machine, from start to the last exit."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.gpus = parse_gpus(options.gpus) if options.gpus else None
        count = len(self.gpus) if self.gpus else options.workers
        if count < 1:
            raise FleetError("--workers must be at least 1")
        if options.haproxy and options.ssl:
            raise FleetError("--ssl with --haproxy: the workers would speak TLS to HAProxy; terminate TLS in HAProxy "
                             "instead (`duplex lb-config`, then add `ssl crt FILE` to its bind line, docs/deploy.md)")
        try:
            self.token = access_token(options)   # handed to the workers by environment, never by argv
        except OptionsError as exc:
            raise FleetError(str(exc)) from None
        self.stopping = asyncio.Event()
        self.all_ready = asyncio.Event()
        self.announced: set[int] = set()   # workers whose DUPLEX_WORKER line is out
        self.failed: FleetError | None = None
        # HAProxy's listening socket is made here and handed down (`bind fd@N`): it accepts from the start, its
        # port is known (--port 0), and clients wait in its backlog, not refused, while HAProxy restarts
        self.front: socket.socket | None = _listen(options.host, options.port) if options.haproxy else None
        self.front_port = self.front.getsockname()[1] if self.front else None
        first = (options.port + 1 if options.haproxy else options.port) if options.port else 0
        self.ports = [first + i if first else 0 for i in range(count)]
        # (duplex, cascade) slots of each worker: its maxconn in HAProxy's backend of each engine
        self.slots: list[tuple[int, int]] = [(0, 0)] * count
        # by its flags (its /health says the same once it serves)
        self.engine_capacity = (0 if options.no_duplex else options.slots, 0 if options.no_cascade else options.cascade_slots)
        self.capacity = sum(self.engine_capacity)   # conversations one worker serves at once
        self.workers = [self._worker(i) for i in range(count)]
        self.haproxy: Child | None = None
        self.config_dir = Path(tempfile.mkdtemp(prefix="duplex-fleet-"))

    def _worker(self, i: int) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop(TOKEN_ENV, None)
        if self.token:
            env[TOKEN_ENV] = self.token
        threads = self.options.threads
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[i]   # the worker's `cuda` is this GPU
        if threads == 0:   # the workers share the cores: each its share of torch's threads (one core left to the loops)
            threads = max(1, ((os.cpu_count() or 2) - 1) // len(self.ports))
        max_connections = self.options.max_connections
        if max_connections == ServeOptions.max_connections:
            max_connections = self.capacity   # the worker itself refuses (capacity, 1013) what HAProxy should not send

        host = "127.0.0.1" if self.options.haproxy else self.options.host   # only HAProxy faces the clients

        def argv() -> list[str]:   # the port it first got, so HAProxy's line for it stays right after a restart
            return worker_argv(self.options, host=host, port=self.ports[i], threads=threads,
                               max_connections=max_connections)
        return Child(f"w{i}", argv, env, lambda line: line.startswith("DUPLEX_READY "))

    # --- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        try:
            await self._wait_first(self.all_ready)
            if self.options.haproxy and not self.stopping.is_set():
                await self._start_haproxy(keepers)
            if self.stopping.is_set():
                return   # a signal, or a failed first start (raised below)
            front = (f"http://{self.options.host}:{self.front_port}" if self.haproxy else
                     ",".join(_url(w.ready_text) for w in self.workers))
            log.info("fleet of %d workers serving; front: %s", len(self.workers), front)
            print(f"DUPLEX_READY {front}", flush=True)
            await self.stopping.wait()   # a signal, or a fatal failure
        finally:
            self.stopping.set()
            await self._stop(keepers)
            shutil.rmtree(self.config_dir, ignore_errors=True)
        if self.failed is not None:
            raise self.failed

    def _on_signal(self) -> None:
        """The first SIGTERM/SIGINT stops the fleet (the workers drain); another is passed on: the workers, told
        twice, stop at once (as one `duplex serve` does)."""
        if not self.stopping.is_set():
            self.stopping.set()
            return
        log.info("signal again: the workers stop now")
        for worker in self.workers:
            worker.signal(signal.SIGTERM)

    async def _wait_first(self, event: asyncio.Event) -> None:
        """Waits for `event`, returning early on a signal or a fatal failure."""
        waits = [asyncio.create_task(event.wait()), asyncio.create_task(self.stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _on_worker_ready(self, child: Child) -> None:
        i = self.workers.index(child)
        url = _url(child.ready_text)
        self.ports[i] = int(url.rsplit(":", 1)[1])
        try:
            self.slots[i] = await _capacity_of(url)
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
            self.slots[i] = self.engine_capacity   # what the flags say
            log.warning("%s: could not read its slots from /health (%s); assuming %d duplex + %d cascade",
                        child.name, exc, *self.engine_capacity)
        pid = child.process.pid if child.process else -1
        print(f"DUPLEX_WORKER {i} {url} {sum(self.slots[i])} {pid}", flush=True)
        log.info("%s serving on %s (%d duplex + %d cascade slots)%s", child.name, url, *self.slots[i],
                 f", restart {child.starts - 1}" if child.starts > 1 else "")
        # Every worker announced, not only flagged ready: a worker's flag is set before its announcement,
        # which waits on its /health, so another worker finishing first must not print DUPLEX_READY early.
        self.announced.add(i)
        if len(self.announced) == len(self.workers):
            self.all_ready.set()

    async def _keep(self, child: Child, on_ready: OnReady | None = None) -> None:
        """Runs `child` until the fleet stops, restarting it with a backoff each time it dies."""
        backoff = BACKOFF_FIRST_S
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                code = await child.run_once(on_ready or self._on_worker_ready)
            except OSError as exc:   # could not even start it (the binary went away, no memory to fork)
                log.error("%s: cannot start: %s", child.name, exc)
                code = -1
            if self.stopping.is_set():
                return
            if not child.ever_ready:
                self.failed = FleetError(f"{child.name} exited with code {code} before it served (see its log "
                                         "lines above); the fleet stops")
                self.stopping.set()
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = BACKOFF_FIRST_S
            log.warning("%s (pid %d) exited with code %d; restarting in %.1f s", child.name,
                        child.process.pid if child.process else -1, code, backoff)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(2 * backoff, BACKOFF_MAX_S)

    async def _start_haproxy(self, keepers: list[asyncio.Task]) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise FleetError("--haproxy: the haproxy binary is not installed (Debian: apt-get install haproxy)")
        workers = [WorkerAddress(_host_of(w.ready_text), self.ports[i], *self.slots[i])
                   for i, w in enumerate(self.workers)]
        assert self.front is not None
        config = self.config_dir / "haproxy.cfg"
        config.write_text(render(workers, BalancerSettings(bind=f"fd@{self.front.fileno()}",
                                                           queue_timeout_s=self.options.lb_queue_timeout_s)))
        check = await asyncio.create_subprocess_exec(binary, "-c", "-f", str(config), pass_fds=(self.front.fileno(),),
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await check.communicate()
        if check.returncode != 0:
            raise FleetError(f"HAProxy refused the configuration {config}:\n{out.decode(errors='replace')}")
        ready = asyncio.Event()
        self.haproxy = Child("haproxy", lambda: [binary, "-db", "-f", str(config)], dict(os.environ), None,
                             pass_fds=(self.front.fileno(),))
        async def on_ready(_: Child) -> None:
            ready.set()
        keepers.append(asyncio.create_task(self._keep(self.haproxy, on_ready)))
        await self._wait_first(ready)

    async def _stop(self, keepers: list[asyncio.Task]) -> None:
        """Workers first (each drains, then closes its sockets 1001 through the balancer), HAProxy last.

        Each keeper ends once its worker's last process has exited: a worker being restarted right now is
        signalled as soon as its new process exists (`Child.stop`), so none is left running and nothing hangs."""
        for worker in self.workers:
            worker.stop(signal.SIGTERM)
        limit = self.options.drain_s + STOP_GRACE_S
        workers = keepers[:len(self.workers)]
        _, late = await asyncio.wait(workers, timeout=limit)
        if late:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    log.error("%s did not exit within %g s of SIGTERM: killed", worker.name, limit)
                worker.stop(signal.SIGKILL)
            await asyncio.wait(workers)
        if self.haproxy is not None:
            self.haproxy.stop(signal.SIGTERM)
        await asyncio.gather(*keepers, return_exceptions=True)
        if self.front is not None:
            self.front.close()


def _url(ready_text: str) -> str:
    return ready_text.split()[1]


def _host_of(ready_text: str) -> str:
    return _url(ready_text).split("://", 1)[1].rsplit(":", 1)[0]


async def _capacity_of(url: str) -> tuple[int, int]:
    """A worker's duplex and cascade slots, from its /health (it has just said it serves)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{url}/health") as response:
            engines = (await response.json())["engines"]
    duplex, cascade = (int(engines.get(name, {}).get("slots", 0)) for name in ("duplex", "cascade"))
    return duplex, cascade


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), backlog=1024)
    except OSError as exc:
        raise FleetError(f"--haproxy cannot listen on {host}:{port}: {exc} (pick another --port)") from None


def run_fleet(options: ServeOptions) -> int:
    if options.workers and options.gpus:
        log.error("give --gpus (one worker per GPU) or --workers (N on one device), not both")
        return 2
    try:
        asyncio.run(Fleet(options).run())
    except FleetError as exc:
        log.error("%s", exc)
        return 2
    return 0
