"""Models behind the engines: specs and presets (`spec`), batched Moshi (`moshi_batch`, `sampling`),
streaming STT (`stt`) and TTS (`tts`), the LLM backends (`llm/`) and the tiny random-weight presets (`tiny/`).
Nothing here knows about sessions or sockets."""
