"""Engines: what a session talks to. Each conversation is an `EngineStream` of an `Engine` (base);
`scheduler` batches the slots of a model; `duplex` (Moshi) and `cascade` (STT -> LLM -> TTS) are the
two engines; `turns` and `transcriber` are the user side they share. Models live in `duplex.models`."""
