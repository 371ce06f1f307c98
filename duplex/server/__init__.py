"""The server layer: `duplex serve` (`serve`, `loading`), the aiohttp app (`app`, `auth`, `settings`),
the app's typed state (`state`), one lifecycle for every conversation socket (`connection`) and a codec
per protocol (`ws_endpoint` for /ws, `moshi_compat` for /api/chat), the per-connection
protocol state machine (`session`, `outbox`), metrics, and `process` to run a server as a child process."""
