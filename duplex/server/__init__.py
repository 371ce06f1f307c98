"""The server layer. The core, in this folder: `duplex serve` (`serve`, its typed `options`), the composition
root that builds the engines and their models (`loading`), the aiohttp app (`app`, `auth`, `settings`, the
typed app `state`), one lifecycle for every conversation socket (`connection`), the per-connection protocol
state machine (`session`, `outbox`), metrics, capacity, the Opus encoder pool, and `process` to run a
server as a child process. The families, each a package: `protocols/` (a codec per socket protocol),
`recording/` (`--record DIR`) and `fleet/` (workers behind HAProxy)."""
