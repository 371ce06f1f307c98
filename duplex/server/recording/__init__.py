"""`--record DIR`: each conversation kept as stereo audio, events and metadata (docs/recordings.md)."""

from .http import add_recording_routes
from .meta import server_meta, weights_job
from .recorder import NULL_RECORDER, AudioReceipt, ConversationRecorder, NullRecorder, answers_input_before
from .store import RECORDED_FILES, RecordingStore, SocketRecorder

__all__ = [
    "NULL_RECORDER",           # the recorder of a server that keeps nothing
    "RECORDED_FILES",          # the files a recording holds: audio.wav, events.jsonl, meta.json
    "AudioReceipt",            # called by the send loop once an assistant frame is sent (what was heard)
    "ConversationRecorder",    # the seam: what the connection and the session tell a recording
    "NullRecorder",            # the ConversationRecorder that keeps nothing
    "RecordingStore",          # the app resource: DIR, the writer thread, counters; a recorder per socket
    "SocketRecorder",          # one socket's recorder: segments and the conversation clock
    "add_recording_routes",    # GET /recordings and /recordings/{id}/{file}, behind the token
    "answers_input_before",    # whether an assistant frame answers input sent before a moment (reset, restart)
    "server_meta",             # what meta.json says about the server
    "weights_job",             # the weight files' SHA-256, computed in a thread at start
]
