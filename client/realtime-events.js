// OpenAI Realtime server events (the WebRTC call's `oai-events` channel) as the page's own `/ws`
// messages, so one handler drives the transcripts, the assistant text, the status and the errors on
// both transports. Nothing here touches the DOM.
//
//   session.created                                   -> ready + status listening (mode: session.model)
//   conversation.item.input_audio_transcription.delta -> partial_transcript (user; the item id keys the segment)
//   ….completed                                       -> final_transcript (user)
//   response.output_audio_transcript.delta            -> partial_transcript (assistant) + llm_response
//   response.output_audio_transcript.done             -> final_transcript (assistant) + llm_response complete
//   output_audio_buffer.started / .stopped            -> status speaking + tts_start / tts_end + status listening
//   output_audio_buffer.cleared, response.done cancelled,
//   error response_cancel_not_active (nothing to cut) -> interrupt_acknowledged
//   error                                             -> error { code, message, param }

export class RealtimeTranslator {
  /** @param {string[]} modes the engines the server has (GET /config), for `ready` */
  constructor(modes) {
    this.modes = modes;
    this.text = new Map();   // item id -> transcript so far
    this.mode = null;
  }

  accumulate(itemId, delta) {
    const text = (this.text.get(itemId) ?? '') + (delta ?? '');
    this.text.set(itemId, text);
    return text;
  }

  finish(itemId, transcript) {
    const text = transcript ?? this.text.get(itemId) ?? '';
    this.text.delete(itemId);
    return text;
  }

  /** The page messages one Realtime event stands for (often none). */
  translate(event) {
    switch (event.type) {
      case 'session.created':
        this.mode = event.session?.model ?? null;
        return [
          { type: 'ready', session_id: event.session?.id, modes: this.modes, protocol: 'realtime',
            audio: { codec: 'opus (WebRTC)', sample_rate: 48000, frame_ms: 20 } },
          { type: 'status', status: 'listening', mode: this.mode },
        ];
      case 'session.updated':
        if (event.session?.model && event.session.model !== this.mode) {
          this.mode = event.session.model;
          return [{ type: 'status', status: 'listening', mode: this.mode }];
        }
        return [];
      case 'conversation.item.input_audio_transcription.delta':
        return [{ type: 'partial_transcript', role: 'user', content: this.accumulate(event.item_id, event.delta),
          start_ms: event.item_id }];
      case 'conversation.item.input_audio_transcription.completed':
        return [{ type: 'final_transcript', role: 'user', content: this.finish(event.item_id, event.transcript),
          start_ms: event.item_id }];
      case 'response.output_audio_transcript.delta':
        return [
          { type: 'partial_transcript', role: 'assistant', content: this.accumulate(event.item_id, event.delta),
            start_ms: event.item_id },
          { type: 'llm_response', content: event.delta ?? '', is_complete: false },
        ];
      case 'response.output_audio_transcript.done':
        return [
          { type: 'final_transcript', role: 'assistant', content: this.finish(event.item_id, event.transcript),
            start_ms: event.item_id },
          { type: 'llm_response', content: '', is_complete: true },
        ];
      case 'output_audio_buffer.started':
        return [{ type: 'status', status: 'speaking', mode: this.mode }, { type: 'tts_start', format: 'opus (WebRTC)' }];
      case 'output_audio_buffer.stopped':
        return [{ type: 'tts_end' }, { type: 'status', status: 'listening', mode: this.mode }];
      case 'output_audio_buffer.cleared':
        return [{ type: 'interrupt_acknowledged' }, { type: 'status', status: 'listening', mode: this.mode }];
      case 'response.done':
        return event.response?.status === 'cancelled' ? [{ type: 'interrupt_acknowledged' }] : [];
      case 'error': {
        const error = event.error ?? {};
        if (error.code === 'response_cancel_not_active') return [{ type: 'interrupt_acknowledged' }];
        return [{ type: 'error', code: error.code ?? error.type ?? 'error', message: error.message ?? '',
          param: error.param ?? null }];
      }
      default:
        return [];
    }
  }
}
