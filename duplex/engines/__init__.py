"""Engines: the batched models behind sessions (duplex Moshi now; the cascade plugs in beside it)."""
