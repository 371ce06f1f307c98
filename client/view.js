// DOM rendering: transcript, assistant text, event log, meters and figures. No protocol logic here.

const $ = (id) => document.getElementById(id);

export const el = {
  mode: $('mode'),
  transport: $('transport'),
  remoteAudio: $('remote-audio'),
  token: $('token'),
  connect: $('connect'),
  start: $('start'),
  stop: $('stop'),
  reset: $('reset'),
  interrupt: $('interrupt'),
  banner: $('banner'),
  connectionPill: $('connection-pill'),
  statusPill: $('status-pill'),
  sessionId: $('session-id'),
  transcript: $('transcript'),
  assistantText: $('assistant-text'),
  llmStatus: $('llm-status'),
  log: $('log'),
  settings: $('settings'),
  settingsNone: $('settings-none'),
};

export function setPill(pill, state, text = state) {
  pill.dataset.state = state;
  pill.textContent = text;
}

/** Shows a message above the controls; `info` banners are hints, others are errors. */
export function showBanner(text, { info = false, onClick = null } = {}) {
  el.banner.textContent = text;
  el.banner.className = info ? 'banner info' : 'banner';
  el.banner.hidden = false;
  el.banner.onclick = onClick;
}

export function hideBanner() {
  el.banner.hidden = true;
  el.banner.onclick = null;
}

export function log(text, { error = false } = {}) {
  const item = document.createElement('li');
  if (error) item.className = 'error';
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, text);
  el.log.prepend(item);
  while (el.log.children.length > 200) el.log.lastChild.remove();
}

function scrollToEnd(box) {
  box.scrollTop = box.scrollHeight;
}

/**
 * Transcript segments of both sides, keyed by role and start_ms: partials update their segment in
 * place (grey, italic), the final fixes its text. A final whose start_ms matches no open segment
 * closes the newest open segment of that role, so no grey partial is ever left behind.
 */
export class TranscriptView {
  constructor(list) {
    this.list = list;
    this.open = new Map();  // `${role}:${startMs}` -> <li> of a segment still partial
  }

  create(role, startMs) {
    const li = document.createElement('li');
    li.className = `${role} partial`;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = role === 'user' ? 'you' : 'assistant';
    const content = document.createElement('span');
    content.className = 'content';
    li.append(who, content);
    this.list.append(li);
    this.open.set(`${role}:${startMs}`, li);
    return li;
  }

  newestOpen(role) {
    let newest = null;
    for (const [key, li] of this.open) if (key.startsWith(`${role}:`)) newest = [key, li];
    return newest;
  }

  partial(role, content, startMs) {
    const li = this.open.get(`${role}:${startMs}`) ?? this.create(role, startMs);
    li.querySelector('.content').textContent = content;
    scrollToEnd(this.list);
  }

  final(role, content, startMs, endMs) {
    let key = `${role}:${startMs}`;
    let li = this.open.get(key);
    if (!li) [key, li] = this.newestOpen(role) ?? [key, this.create(role, startMs)];
    li.querySelector('.content').textContent = content;
    li.classList.replace('partial', 'final');
    if (endMs !== undefined) li.title = `${startMs} – ${endMs} ms`;
    this.open.delete(key);
    scrollToEnd(this.list);
  }

  divider(text) {
    const li = document.createElement('li');
    li.className = 'divider';
    li.textContent = text;
    this.list.append(li);
    this.open.clear();
    scrollToEnd(this.list);
  }
}

/** The assistant's text as it streams (`llm_response`), one paragraph per response. */
export class AssistantTextView {
  constructor(box) {
    this.box = box;
    this.current = null;
  }

  append(content, isComplete) {
    if (!this.current) {
      this.current = document.createElement('p');
      this.current.className = 'streaming';
      this.box.append(this.current);
    }
    this.current.textContent += content;
    if (isComplete) this.end();
    scrollToEnd(this.box);
  }

  end() {
    if (!this.current) return;
    this.current.classList.remove('streaming');
    this.current = null;
  }
}

/** Maps an RMS level in [0, 1] to a bar width and a dBFS label. */
export function setMeter(name, rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const fraction = Math.min(1, Math.max(0, (db + 60) / 60));  // -60 dBFS .. 0 dBFS
  $(`meter-${name}`).style.width = `${(fraction * 100).toFixed(1)}%`;
  $(`meter-${name}-db`).textContent = db <= -100 ? '–∞ dB' : `${db.toFixed(0)} dB`;
}

export function setFigure(name, text) {
  $(`fig-${name}`).textContent = text;
}
