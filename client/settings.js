// The conversation settings: a form built from the server's `GET /config` (the config schema and, per
// engine, the keys it takes and its voices), kept in localStorage and in the page's URL (a link
// reproduces a setup), sent as `start.config` (or `session.update` over WebRTC) and, for the keys the
// engine takes mid-conversation, as `configure` when changed. A refusal (`error` `unsupported` or
// `bad_message` naming a key) is shown beside that key's field.
//
// URL: each key by name, e.g. ?system_prompt=You%20like%20trains.&voice=NATM1.wav&temperature=0.6&seed=7
// &transcribe_user=1. The access token is never stored or put in the URL by the page.

// The keys a person sets by hand (tools and their options are for programs; `record` is the operator's).
export const PAGE_KEYS = [
  'system_prompt', 'voice', 'temperature', 'text_temperature', 'top_k', 'text_top_k', 'seed', 'transcribe_user',
];
// Over WebRTC the settings travel as a Realtime `session` (webrtc.js realtimeSession): these keys have a field there.
export const REALTIME_KEYS = ['system_prompt', 'voice', 'transcribe_user'];
const STORE = 'duplex.settings';
const LABELS = {
  system_prompt: 'System prompt',
  voice: 'Voice',
  temperature: 'Audio temperature',
  text_temperature: 'Text temperature',
  top_k: 'Audio top-k',
  text_top_k: 'Text top-k',
  seed: 'Seed',
  transcribe_user: 'Transcribe me',
};

/** The http(s) origin of the server the page talks to (`?server=ws://host:port` or the page's own). */
export function httpBase(server) {
  if (!server) return new URL('/', location.href);
  const url = new URL(server, location.href);
  url.protocol = url.protocol === 'wss:' ? 'https:' : url.protocol === 'ws:' ? 'http:' : url.protocol;
  url.pathname = '/';
  url.search = '';
  return url;
}

/** The config key an `error` is about: its `param` (/ws and Realtime errors), else the first key its text names
 * (a server older than `param` on /ws). */
export function keyOfError(error, keys = PAGE_KEYS) {
  if (error.param) {
    const param = String(error.param).replace(/^(config|session)\./, '');
    const alias = { instructions: 'system_prompt', 'audio.output.voice': 'voice',
      'audio.input.transcription': 'transcribe_user' };
    return keys.includes(param) ? param : alias[param] ?? null;
  }
  const text = String(error.message ?? '');
  const dotted = text.match(/config\.([a-z_]+)/);
  if (dotted && keys.includes(dotted[1])) return dotted[1];
  // `_` is a word character: "temperature" does not match inside "text_temperature".
  return keys.find((k) => new RegExp(`\\b${k}\\b`).test(text)) ?? null;
}

export class Settings {
  /**
   * @param {HTMLElement} box  where the fields go
   * @param {object} hooks     onChange(key): a field changed (after it was stored)
   */
  constructor(box, hooks = {}) {
    this.box = box;
    this.hooks = hooks;
    this.schema = null;      // GET /config
    this.values = {};        // key -> string (numbers and text as typed) or boolean; absent: server default
    this.mode = 'auto';
    this.transport = 'websocket';   // webrtc: only the keys a Realtime session has (REALTIME_KEYS)
    this.fields = new Map();  // key -> { input, error, note }
  }

  /** Reads the server's config description; false (and no form) when it has none (an older server). */
  async load(base) {
    try {
      const response = await fetch(new URL('config', base), { cache: 'no-store' });
      if (!response.ok) return false;
      this.schema = await response.json();
    } catch {
      return false;
    }
    return true;
  }

  /** Values from localStorage, then the URL's (a link wins over what this browser kept). */
  restore(params) {
    try {
      Object.assign(this.values, JSON.parse(localStorage.getItem(STORE) ?? '{}'));
    } catch { /* a broken entry is forgotten */ }
    for (const key of PAGE_KEYS) {
      if (!params.has(key)) continue;
      const raw = params.get(key);
      this.values[key] = key === 'transcribe_user' ? ['1', 'true', 'on'].includes(raw) : raw;
    }
    for (const key of Object.keys(this.values)) if (!PAGE_KEYS.includes(key)) delete this.values[key];
  }

  /** The page's own choices (mode, transport): the URL's, else this browser's last ones. */
  restoreChoices(params, names) {
    let kept = {};
    try {
      kept = JSON.parse(localStorage.getItem(`${STORE}.page`) ?? '{}');
    } catch { /* forgotten */ }
    return Object.fromEntries(names.map((n) => [n, params.get(n) ?? kept[n] ?? null]));
  }

  /** Writes the values (and `extra`, the page's choices) to localStorage and the URL (replaceState: no
   * history entry per keystroke). */
  persist(extra = {}) {
    const set = Object.fromEntries(Object.entries(this.values).filter(([, v]) => v !== '' && v !== false));
    localStorage.setItem(STORE, JSON.stringify(set));
    localStorage.setItem(`${STORE}.page`, JSON.stringify(extra));
    const url = new URL(location.href);
    for (const key of PAGE_KEYS) url.searchParams.delete(key);
    for (const [key, value] of Object.entries(set)) url.searchParams.set(key, value === true ? '1' : value);
    for (const [key, value] of Object.entries(extra)) {
      if (value) url.searchParams.set(key, value);
      else url.searchParams.delete(key);
    }
    history.replaceState(null, '', url);
  }

  /** What `mode` offers: keys at start, keys mid-conversation, voices. `auto`: what every loaded engine takes. */
  offer(mode) {
    const engines = this.schema?.engines ?? {};
    const names = mode === 'auto' ? Object.keys(engines) : [mode].filter((m) => engines[m]);
    if (names.length === 0) return { start: [], configure: [], voices: [], defaultVoice: null };
    const all = (list) => names.map((n) => engines[n][list]).reduce((a, b) => a.filter((x) => b.includes(x)));
    const voices = all('voices');
    const keys = this.transport === 'webrtc' ? REALTIME_KEYS : PAGE_KEYS;
    const start = all('start').filter((k) => keys.includes(k) && (k !== 'voice' || voices.length > 0));
    const defaultVoice = names.length === 1 ? engines[names[0]].default_voice : null;
    return { start, configure: all('configure'), voices, defaultVoice };
  }

  /** Builds the fields `mode` takes (the others are kept, not shown, not sent). */
  render(mode) {
    this.mode = mode;
    this.box.replaceChildren();
    this.fields.clear();
    if (!this.schema) return;
    const offer = this.offer(mode);
    for (const key of offer.start) this.box.append(this.field(key, this.schema.keys[key], offer));
  }

  field(key, spec, offer) {
    const wrap = document.createElement('div');
    wrap.className = `field field-${spec.type}`;
    wrap.dataset.key = key;
    wrap.title = spec.doc;
    const label = document.createElement('label');
    label.htmlFor = `cfg-${key}`;
    label.textContent = LABELS[key] ?? key;
    let input;
    const value = this.values[key];
    if (key === 'voice') {
      input = document.createElement('select');
      const choices = [['', `server default${offer.defaultVoice ? ` (${offer.defaultVoice})` : ''}`],
        ...offer.voices.map((v) => [v, v])];
      // A voice from a link or another server stays selected (the server will say it is not offered).
      if (value && !offer.voices.includes(value)) choices.push([value, `${value} (not offered here)`]);
      for (const [v, text] of choices) input.add(new Option(text, v, false, v === (value ?? '')));
    } else if (key === 'system_prompt') {
      input = document.createElement('textarea');
      input.rows = 2;
      // The cascade's default prompt; a duplex model has none unless given one (a persona's role).
      input.placeholder = this.mode === 'duplex' ? 'none: the model speaks as itself' : spec.default ?? '';
      input.value = value ?? '';
    } else if (spec.type === 'boolean') {
      input = document.createElement('input');
      input.type = 'checkbox';
      input.checked = value === true;
    } else {
      input = document.createElement('input');
      input.type = 'number';
      input.step = spec.type === 'integer' ? '1' : '0.05';
      if (spec.low !== undefined) input.min = spec.low;
      if (spec.high !== undefined && key !== 'seed') input.max = spec.high;
      input.placeholder = spec.default_doc ?? (spec.default ?? '');
      input.value = value ?? '';
    }
    input.id = `cfg-${key}`;
    input.name = key;
    const note = document.createElement('small');
    note.className = 'field-note muted';
    const error = document.createElement('small');
    error.className = 'field-error';
    error.id = `cfg-${key}-error`;
    error.setAttribute('role', 'alert');
    error.hidden = true;
    input.addEventListener('change', () => {
      this.values[key] = input.type === 'checkbox' ? input.checked : input.value.trim();
      this.clearError(key);
      this.hooks.onChange?.(key);
    });
    wrap.append(label, input, note, error);
    this.fields.set(key, { input, error, note });
    return wrap;
  }

  /** The value of `key` as the server wants it, or undefined when unset. */
  typed(key) {
    const value = this.values[key];
    const spec = this.schema?.keys[key];
    if (value === undefined || value === '' || !spec) return undefined;
    if (spec.type === 'boolean') return value === true ? true : undefined;
    if (spec.type === 'number' || spec.type === 'integer') {
      const n = Number(value);
      return Number.isNaN(n) ? value : n;   // not a number: sent as typed, for the server to refuse by name
    }
    return value;
  }

  /** `start.config`: the set keys that `mode` takes. */
  config(mode = this.mode) {
    const config = {};
    for (const key of this.offer(mode).start) {
      const value = this.typed(key);
      if (value !== undefined) config[key] = value;
    }
    return config;
  }

  /** Whether `engine` (the one the conversation runs on) takes `key` with `configure` (WebRTC: `session.update`
   * takes each of its keys at any time; a duplex persona restarts the conversation with the new one). */
  takesMidConversation(engine, key) {
    if (this.transport === 'webrtc') return REALTIME_KEYS.includes(key);
    return Boolean(this.schema?.engines?.[engine]?.configure.includes(key));
  }

  /** Shows a note under a field, e.g. "applies at the next Start". */
  note(key, text) {
    const field = this.fields.get(key);
    if (field) field.note.textContent = text;
  }

  /** Shows a refusal beside `key`'s field; false when the field is not on the page. */
  showError(key, text) {
    const field = this.fields.get(key);
    if (!field) return false;
    field.error.textContent = text;
    field.error.hidden = false;
    field.input.setAttribute('aria-invalid', 'true');
    return true;
  }

  clearError(key) {
    const field = this.fields.get(key);
    if (!field) return;
    field.error.hidden = true;
    field.error.textContent = '';
    field.input.removeAttribute('aria-invalid');
    field.note.textContent = '';
  }

  clearErrors() {
    for (const key of this.fields.keys()) this.clearError(key);
  }

  /** Disables the fields `engine` does not take mid-conversation while a conversation runs. */
  lock(engine) {
    for (const [key, { input }] of this.fields) {
      input.disabled = Boolean(engine) && !this.takesMidConversation(engine, key);
    }
  }
}
