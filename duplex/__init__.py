"""duplex: a full-duplex speech model server (batched Moshi + a cascaded fallback)."""

__version__ = "0.1.0"
