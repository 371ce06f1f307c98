"""`duplex lb-config`: the HAProxy configuration that puts a set of `duplex serve` workers behind one address.

HAProxy is the admission control: a conversation socket (`/ws`, `/api/chat`, `/v1/realtime`) holds one
connection to one worker for its whole life, and one slot of one engine. So each engine is a backend, in
which each worker is a server with `maxconn` = its slots of that engine, balanced by least connections:
the engine a conversation asks for (`/ws?mode=`, `/v1/realtime?model=`, always duplex on `/api/chat`)
picks the backend, so it lands on a worker with a free slot *of that engine* (a worker's duplex and
cascade slots are not one pool: a duplex conversation cannot use a cascade slot). `auto` (or no engine
named) goes to the duplex backend while some worker has a duplex connection free, else to the cascade
backend; the backend tells the worker which engine it counted the socket against (`X-Duplex-Engine`),
and the worker's `auto` takes that engine first, so HAProxy's counts and the worker's slots agree.
When every worker's slots of the engine are busy, a conversation waits in HAProxy's queue at most
`queue_timeout_s`, then gets a 503 whose body is the protocol's `capacity` error (never a hang); an
engine no worker serves is refused at once (501, `unsupported`). Everything else (the page, `/health`, `/metrics` through the
balancer) goes to a second backend without a connection limit, so a page load never takes a slot.
Health checks read `/health` (a draining worker answers 503 and gets no new conversation; its running
ones go on). Upgraded sockets live under `timeout tunnel` (long: a conversation is long, and silent
stretches are still 12.5 audio messages a second).

Workers are given either as a list (`host:port:slots`, one `server` line each; many hosts are just more
lines) or, on Kubernetes, as a DNS name (`server-template` over a headless Service: HAProxy follows the
pods as they come and go). See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..capacity import ENGINE_HEADER   # set by an engine's backend: the engine the socket is counted against
from ..options import LB_QUEUE_TIMEOUT_S

CONVERSATION_PATHS = ("/ws", "/api/chat", "/v1/realtime")


ENGINES = ("duplex", "cascade")   # each its own backend, in the order `auto` tries them


def parse_slots(text: str) -> tuple[int, int]:
    """`D` or `D+C`: a worker's duplex slots and cascade slots (`0+4`: cascade only)."""
    duplex, _, cascade = text.partition("+")
    return int(duplex), int(cascade or 0)


@dataclass(frozen=True)
class WorkerAddress:
    host: str
    port: int
    duplex_slots: int         # duplex conversations it serves at once: its maxconn in the duplex backend
    cascade_slots: int = 0    # cascade conversations: its maxconn in the cascade backend

    @classmethod
    def parse(cls, text: str) -> "WorkerAddress":
        """`host:port:slots`, slots = `D` (duplex) or `D+C` (duplex + cascade); IPv6 hosts in brackets:
        `[::1]:9001:8`."""
        head, sep, slots = text.rpartition(":")
        host, sep2, port = head.rpartition(":")
        if not sep or not sep2 or not host:
            raise ValueError(f"worker {text!r}: expected host:port:slots, e.g. 127.0.0.1:9001:8 (or :8+4 with 4 "
                             "cascade slots)")
        try:
            worker = cls(host, int(port), *parse_slots(slots))
        except ValueError:
            raise ValueError(f"worker {text!r}: port and slots must be integers (host:port:slots, slots = "
                             "duplex or duplex+cascade)") from None
        if not 0 < worker.port < 65536 or worker.slots < 1 or min(worker.duplex_slots, worker.cascade_slots) < 0:
            raise ValueError(f"worker {text!r}: port in 1-65535 and at least one slot")
        return worker

    @property
    def slots(self) -> int:
        return self.duplex_slots + self.cascade_slots

    def engine_slots(self, engine: str) -> int:
        return self.duplex_slots if engine == "duplex" else self.cascade_slots

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DnsWorkers:
    """Workers found by DNS: every address of `name` (a headless Service), `count` server slots at most; every
    worker has the same slots of each engine (one Deployment)."""
    name: str
    port: int
    duplex_slots: int
    count: int
    resolver: str | None = None   # ip:port of a DNS server; None: the nameservers of /etc/resolv.conf (a pod's)
    cascade_slots: int = 0

    @property
    def slots(self) -> int:
        return self.duplex_slots + self.cascade_slots

    def engine_slots(self, engine: str) -> int:
        return self.duplex_slots if engine == "duplex" else self.cascade_slots


@dataclass(frozen=True)
class BalancerSettings:
    bind: str = "127.0.0.1:8998"          # where clients connect
    queue_timeout_s: float = LB_QUEUE_TIMEOUT_S   # a conversation waits this long for a free slot, then 503
    check_interval_ms: int = 1000         # /health checks per worker
    tunnel_timeout_s: int = 3600          # an upgraded socket with no traffic either way this long is closed
    connect_timeout_s: float = 5.0
    stats_bind: str | None = None         # HAProxy's own stats page and Prometheus exporter (host:port)


def _error_body(code: str, message: str) -> str:
    return json.dumps({"type": "error", "session_id": "", "code": code, "message": message})


CAPACITY_BODY = _error_body("capacity", "every worker is full; try again later")


def capacity_body(engine: str, engines: list[str]) -> str:
    """The 503 of an engine's backend when every worker's slots of it stayed busy for the queue timeout."""
    other = [e for e in engines if e != engine]
    hint = f" (or ask for the {other[0]} engine)" if other else ""
    return _error_body("capacity", f"every {engine} slot of every worker is busy; try again later{hint}")


def unsupported_body(engine: str) -> str:
    return _error_body("unsupported", f"no worker behind this balancer serves the {engine} engine")


def _s(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _frontend(engines: list[str], settings: BalancerSettings) -> list[str]:
    """Conversations go to the backend of the engine they ask for; `auto` (or none named) to duplex while a
    duplex connection is free somewhere, else cascade; an engine that no worker serves is refused here."""
    lines = [
        "frontend clients",
        f"    bind {settings.bind}",
        f"    acl conversation path {' '.join(CONVERSATION_PATHS)}",
        "    # the engine asked for: /ws ?mode=, /v1/realtime ?model=, /api/chat always duplex (the workers read the",
        "    # same first occurrence, decoded); anything else (auto, none, a bad value the worker refuses): auto",
        "    http-request set-var(txn.engine) url_param(mode),url_dec if { path /ws }",
        "    http-request set-var(txn.engine) url_param(model),url_dec if { path /v1/realtime }",
        "    http-request set-var(txn.engine) str(duplex) if { path /api/chat }",
    ]
    lines += [f"    acl wants_{e} var(txn.engine) -m str {e}" for e in ENGINES]
    lines += [f"    http-request return status 501 content-type application/json string '{unsupported_body(e)}' "
              f"if conversation wants_{e}" for e in ENGINES if e not in engines]
    if len(engines) == 2:
        lines += [f"    use_backend {e} if conversation wants_{e}" for e in engines]
        lines += ["    # auto: duplex while some worker has a duplex connection free, else cascade (the worker is told",
                  "    # which, and takes that engine first: HAProxy's counts and its slots agree)",
                  "    use_backend duplex if conversation { be_conn_free(duplex) gt 0 }"]
    lines += [f"    use_backend {engines[-1]} if conversation", "    default_backend pages"]
    return lines


def _backend(engine: str, engines: list[str], workers: list[WorkerAddress] | DnsWorkers, primary: dict[int, str],
             settings: BalancerSettings) -> list[str]:
    check = (f"check inter {settings.check_interval_ms}ms fastinter {settings.check_interval_ms // 2}ms "
             "fall 2 rise 1")
    lines = [
        "",
        f"backend {engine}",
        f"    # one {engine} conversation = one connection for its whole life: maxconn = the worker's {engine} slots,",
        "    # least connections first; past every maxconn: the queue, then this 503",
        "    balance leastconn",
        "    http-reuse never",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    http-error status 503 content-type application/json string '{capacity_body(engine, engines)}'",
        f"    http-request set-header {ENGINE_HEADER} {engine}",
    ]
    if isinstance(workers, DnsWorkers):
        lines += [f"    default-server {check}",
                  f"    server-template w 1-{workers.count} {workers.name}:{workers.port} "
                  f"maxconn {workers.engine_slots(engine)} resolvers cluster init-addr none"]
        return lines
    for i, w in enumerate(workers):   # one health check per worker: its first engine's; the others follow it
        if w.engine_slots(engine):
            state = check if primary[i] == engine else f"track {primary[i]}/w{i}"
            lines.append(f"    server w{i} {w} maxconn {w.engine_slots(engine)} {state}")
    return lines


def render(workers: list[WorkerAddress] | DnsWorkers, settings: BalancerSettings = BalancerSettings()) -> str:
    """The whole haproxy.cfg as text."""
    if isinstance(workers, list) and not workers:
        raise ValueError("no workers: give at least one host:port:slots")
    if isinstance(workers, list):
        total_slots = sum(w.slots for w in workers)
        engines = [e for e in ENGINES if any(w.engine_slots(e) for w in workers)]
        primary = {i: next(e for e in ENGINES if w.engine_slots(e)) for i, w in enumerate(workers)}
    else:
        total_slots = workers.slots * workers.count
        engines = [e for e in ENGINES if workers.engine_slots(e)]
        primary = {}
    if not engines:
        raise ValueError("no slots: every worker needs at least one duplex or cascade slot")
    lines = [
        "# Written by `duplex lb-config` (docs/deploy.md). One line per worker below; regenerate rather than edit.",
        "global",
        f"    maxconn {max(1024, 2 * total_slots + 256)}",
        "",
        "defaults",
        "    mode http",
        "    option dontlognull",
        f"    timeout connect {_s(settings.connect_timeout_s)}",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout client-fin 5s",
        # once upgraded, a WebSocket is a tunnel: this is its idle limit (the worker also pings every 30 s)
        f"    timeout tunnel {settings.tunnel_timeout_s}s",
        f"    timeout queue {_s(settings.queue_timeout_s)}",
        # a connect refused (a worker that just died, before its check fails) is retried on another worker
        "    retries 2",
        "    option redispatch 1",
        "",
        *_frontend(engines, settings),
    ]
    for engine in engines:
        lines += _backend(engine, engines, workers, primary, settings)
    lines += [
        "",
        "backend pages",
        "    # the browser page, /health and /metrics through the balancer: no slot taken",
        "    balance roundrobin",
    ]
    if isinstance(workers, list):
        lines += [f"    server w{i} {w} track {primary[i]}/w{i}" for i, w in enumerate(workers)]
    else:
        lines.append(f"    server-template w 1-{workers.count} {workers.name}:{workers.port} "
                     "resolvers cluster init-addr none check inter 2s")
        source = f"nameserver dns {workers.resolver}" if workers.resolver else "parse-resolv-conf"
        lines += ["", "resolvers cluster", f"    {source}", "    hold valid 5s",
                  "    accepted_payload_size 8192"]
    if settings.stats_bind:
        lines += ["", "frontend stats", f"    bind {settings.stats_bind}",
                  "    http-request use-service prometheus-exporter if { path /metrics }",
                  "    stats enable", "    stats uri /stats", "    stats refresh 5s"]
    return "\n".join(lines) + "\n"


def add_lb_config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lb-config", help="write the HAProxy configuration for a set of duplex workers",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="HAProxy in front of `duplex serve` workers: a backend per engine (the one a "
                                   "conversation asks for), maxconn = a worker's slots of that engine, least "
                                   "connections, /health checks, a capacity 503 when all are full, long WebSocket "
                                   "timeouts (docs/deploy.md).")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT:SLOTS",
                   help="a worker and the conversations it serves at once: SLOTS = its duplex slots, or "
                        "DUPLEX+CASCADE (8+4; 0+4: cascade only) (repeat for each; any host)")
    p.add_argument("--dns", metavar="NAME:PORT",
                   help="instead of --worker: every address of a DNS name (a Kubernetes headless Service), "
                        "e.g. duplex-workers.duplex.svc.cluster.local:8998")
    p.add_argument("--dns-slots", type=int, default=8, help="--dns: duplex slots of each worker")
    p.add_argument("--dns-cascade-slots", type=int, default=0, help="--dns: cascade slots of each worker")
    p.add_argument("--dns-max-workers", type=int, default=32, help="--dns: most workers HAProxy keeps a line for")
    p.add_argument("--resolver", metavar="IP:PORT",
                   help="--dns: the DNS server; default: the nameservers of /etc/resolv.conf (a pod's: the cluster DNS)")
    p.add_argument("--bind", default=BalancerSettings.bind, help="address:port HAProxy listens on for clients")
    p.add_argument("--queue-timeout-s", type=float, default=BalancerSettings.queue_timeout_s,
                   help="how long a new conversation waits for a free slot when every worker is full, "
                        "before it gets a 503 capacity")
    p.add_argument("--check-interval-ms", type=int, default=BalancerSettings.check_interval_ms,
                   help="time between /health checks of each worker (2 failures mark it down)")
    p.add_argument("--tunnel-timeout-s", type=int, default=BalancerSettings.tunnel_timeout_s,
                   help="an open conversation socket with no traffic this long is closed")
    p.add_argument("--stats", metavar="HOST:PORT", help="also serve HAProxy's stats page (/stats) and its "
                                                        "Prometheus exporter (/metrics) here")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run_lb_config)


def settings_from_args(args: argparse.Namespace) -> BalancerSettings:
    return BalancerSettings(bind=args.bind, queue_timeout_s=args.queue_timeout_s,
                            check_interval_ms=args.check_interval_ms, tunnel_timeout_s=args.tunnel_timeout_s,
                            stats_bind=args.stats)


def run_lb_config(args: argparse.Namespace) -> int:
    try:
        workers: list[WorkerAddress] | DnsWorkers
        if args.dns:
            if args.worker:
                raise ValueError("give either --worker lines or --dns, not both")
            name, _, port = args.dns.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"--dns {args.dns!r}: expected NAME:PORT")
            if min(args.dns_slots, args.dns_cascade_slots) < 0:
                raise ValueError("--dns-slots and --dns-cascade-slots cannot be negative")
            workers = DnsWorkers(name, int(port), args.dns_slots, args.dns_max_workers, args.resolver,
                                 args.dns_cascade_slots)
        else:
            workers = [WorkerAddress.parse(w) for w in args.worker]
        text = render(workers, settings_from_args(args))
    except ValueError as exc:
        print(f"duplex lb-config: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
