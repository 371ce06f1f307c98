"""`duplex eval`: how a running server takes turns, in the spirit of Full-Duplex-Bench (Lin et al., 2025).

Scenarios (user audio with timing annotations: pauses, turn ends, interruptions, backchannel cues) are
played through the real Python client at real-time pace; the assistant's speech is found in the audio
that comes back (a voice activity detector, the same for both modes) and scored against the
annotations. `scenarios` (format, generation, the Full-Duplex-Bench converter), `vad` (speech
detectors), `metrics` (pure scoring), `runner` (playing a scenario), `report` (JSON, Markdown, plot,
compare), `command` (the CLI).
"""
