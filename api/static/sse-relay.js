// sse-relay's browser client, at the reading end of the flow: it starts a generation with `fetch`, follows its
// Server-Sent Events, and resumes by itself (Last-Event-ID) when the connection drops. An ES module with no
// build step, served by the API at /static/sse-relay.js:
//
//   import { RelayClient } from "/static/sse-relay.js";
//   const relay = new RelayClient("", { apiKey });           // "" = the page's own origin
//   for await (const event of relay.stream({ prompt: "Hi" })) { ... }
//   const { text } = await relay.generate({ prompt: "Hi" });

/** A failure the caller can act on: an `error` terminal event, an HTTP error answer, or a lost connection. */
export class RelayError extends Error {
  constructor(code, message, { retryable = false, status = null, id = null } = {}) {
    super(message);
    this.name = "RelayError";
    this.code = code;
    this.retryable = retryable;
    this.status = status;
    this.id = id;
  }
}

/**
 * Incremental parser of the `text/event-stream` format (the HTML standard's rules): CR, LF or CRLF line ends
 * (also split across chunks), comments, multi-line `data`, `id` kept across messages, a partial message at the
 * end of the stream dropped. Feed it decoded text; it returns the complete messages.
 */
export class SseParser {
  #buffer = "";
  #data = [];
  #event = "";
  #idBuffer = "";
  lastEventId = "";
  retry = null;

  push(text) {
    this.#buffer += text;
    return this.#drain(false);
  }

  /** The stream ended: a message without its blank line is incomplete and is dropped. */
  end() {
    const messages = this.#drain(true);
    this.#buffer = "";
    this.#data = [];
    this.#event = "";
    return messages;
  }

  #drain(final) {
    const messages = [];
    const buffer = this.#buffer;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const code = buffer.charCodeAt(i);
      if (code !== 10 && code !== 13) continue;
      // A CR as the last character may be the first half of a CRLF whose LF is in the next chunk.
      if (code === 13 && i === buffer.length - 1 && !final) break;
      const line = buffer.slice(start, i);
      if (code === 13 && buffer.charCodeAt(i + 1) === 10) i++;
      start = i + 1;
      const message = this.#line(line);
      if (message !== null) messages.push(message);
    }
    this.#buffer = buffer.slice(start);
    return messages;
  }

  #line(line) {
    if (line === "") return this.#dispatch();
    if (line.charCodeAt(0) === 58) return null; // ":" starts a comment (the server's keep-alive pings)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.#data.push(value);
    else if (field === "event") this.#event = value;
    else if (field === "id" && !value.includes("\0")) this.#idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }

  #dispatch() {
    this.lastEventId = this.#idBuffer;
    if (this.#data.length === 0) {
      this.#event = "";
      return null;
    }
    const message = { data: this.#data.join("\n"), event: this.#event || "message", id: this.lastEventId };
    this.#data = [];
    this.#event = "";
    return message;
  }
}

/** Whether stream id `a` ("<ms>-<seq>") comes after `b`; ids that do not parse only count as different. */
export function isAfter(a, b) {
  const pa = parseId(a);
  const pb = parseId(b);
  if (pa === null || pb === null) return a !== b;
  return pa[0] > pb[0] || (pa[0] === pb[0] && pa[1] > pb[1]);
}

function parseId(id) {
  const match = /^(\d+)-(\d+)$/.exec(id ?? "");
  return match ? [BigInt(match[1]), BigInt(match[2])] : null;
}

/** Length in Unicode code points, as the server counts it (a JavaScript string's `length` counts UTF-16 units). */
export function codePointLength(text) {
  let length = 0;
  for (const _ of text) length++;
  return length;
}

/** Hex SHA-256 of the text's UTF-8 bytes (needs `crypto.subtle`: https, localhost, or 127.0.0.1). */
export async function sha256Hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

const TERMINAL = new Set(["done", "error"]);

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // unlike randomUUID, also outside secure contexts
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
// Answers worth another try: the API restarting or overloaded, a proxy in between timing out.
const RETRYABLE_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);

function abortError(signal) {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

async function errorFrom(response, id = null) {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error?.code) code = body.error.code;
    if (body?.error?.message) message = body.error.message;
  } catch {
    // Not our JSON error (a proxy's page): the status says enough.
  }
  return new RelayError(code, message, { retryable: RETRYABLE_STATUS.has(response.status), status: response.status, id });
}

/**
 * One connection's abort switch: the caller's signal detaches, and a connection silent for longer than
 * `idleMs` (the server pings every 15 s) is dropped so a half-open socket turns into a reconnect.
 */
class Connection {
  constructor(signal, idleMs) {
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.idleMs = idleMs;
    this.timer = null;
    this.outer = signal;
    this.onAbort = () => this.controller.abort(abortError(signal));
    if (signal?.aborted) this.onAbort();
    else signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  arm() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(new RelayError("idle_timeout", "The stream went silent.")), this.idleMs);
  }

  disarm() {
    clearTimeout(this.timer);
  }

  close() {
    this.disarm();
    this.outer?.removeEventListener("abort", this.onAbort);
  }
}

/** Where one followed generation stands; exposed on the iterator `stream()` and `events()` return. */
class Position {
  id = null;
  token = null;
  lastEventId = null;
  terminal = null;
  // true once the server answered 204 to a reconnect: the generation had already ended.
  endedBefore = false;
}

export class RelayClient {
  #fetch;

  /**
   * @param {string} baseUrl the relay's URL ("" for the page's own origin; may have a path prefix)
   * @param {{apiKey?: string, retries?: number, backoffMs?: number, maxBackoffMs?: number, idleTimeoutMs?: number,
   *          fetch?: typeof fetch}} options retries = reconnect attempts in a row without an event
   */
  constructor(baseUrl = "", options = {}) {
    const { apiKey = null, retries = 10, backoffMs = 250, maxBackoffMs = 5000, idleTimeoutMs = 45000 } = options;
    const origin = globalThis.location?.href;
    const base = new URL(baseUrl || "/", origin);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    this.baseUrl = base.href;
    this.apiKey = apiKey;
    this.retries = retries;
    this.backoffMs = backoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.idleTimeoutMs = idleTimeoutMs;
    this.#fetch = options.fetch ?? ((url, init) => globalThis.fetch(url, init));
  }

  /**
   * Start a generation and iterate over its events ({type, data, id, ...}); resumes by itself, yields each event
   * once, passes `reset` on, and ends after the terminal event. The iterator's `id` is the generation id once
   * the POST has answered (also given to `onOpen({id, token})`). `signal` detaches without cancelling.
   */
  stream(body, { signal, onOpen, onRetry, idempotencyKey } = {}) {
    const position = new Position();
    // Every start carries an Idempotency-Key, so a POST retried after a drop attaches to the generation it may
    // already have started instead of starting a second one.
    const key = idempotencyKey ?? randomKey();
    const open = (connection) => this.#post(body, position, connection, key);
    return exposed(this.#follow(position, open, { signal, onOpen, onRetry }), position);
  }

  /** Follow an existing generation from after `lastEventId` (from the start without it); as `stream`. */
  events(id, { lastEventId = null, token = null, signal, onOpen, onRetry } = {}) {
    const position = new Position();
    position.id = id;
    position.token = token;
    position.lastEventId = lastEventId;
    return exposed(this.#follow(position, null, { signal, onOpen, onRetry }), position);
  }

  /**
   * Run a generation to its end: {id, text, reasoning, finishReason, usage}, the text after the last `reset`,
   * checked against `done`'s length and sha256. An `error` terminal throws a RelayError with its code.
   */
  async generate(body, { signal, onEvent, onOpen, onRetry, idempotencyKey } = {}) {
    return this.#collect(this.stream(body, { signal, onOpen, onRetry, idempotencyKey }), onEvent);
  }

  /** `generate` for a generation already started (e.g. after a page reload). */
  async result(id, { signal, onEvent, onRetry, token } = {}) {
    return this.#collect(this.events(id, { signal, onRetry, token }), onEvent);
  }

  /** Start a generation with no client attached: {id, status, url, events_url, token}. */
  async start(body) {
    return this.#json("POST", "v1/generations", { ...body, background: true });
  }

  /** The generation's record: status, text so far or final, error, usage, ... */
  async get(id, { token = null } = {}) {
    return this.#json("GET", `v1/generations/${encodeURIComponent(id)}`, undefined, token);
  }

  /** Stop a generation (idempotent): its stream ends with an `error` event whose code is `cancelled`. */
  async cancel(id) {
    return this.#json("POST", `v1/generations/${encodeURIComponent(id)}/cancel`);
  }

  async #collect(iterator, onEvent) {
    let text = "";
    let reasoning = "";
    for await (const event of iterator) {
      onEvent?.(event);
      if (event.type === "reset") {
        text = "";
        reasoning = "";
      } else if (event.type === "content") text += event.data;
      else if (event.type === "reasoning") reasoning += event.data;
    }
    const id = iterator.id;
    const terminal = iterator.terminal;
    if (terminal === null) return this.#finishedEarlier(id, iterator.token);
    if (terminal.type === "error") {
      throw new RelayError(terminal.code ?? "internal", terminal.error ?? "The generation failed.", {
        retryable: Boolean(terminal.data?.retryable),
        id,
      });
    }
    const { finish_reason: finishReason = null, usage = null } = terminal.data ?? {};
    await checkDone(text, terminal, id);
    return { id, status: "done", text, reasoning, finishReason, usage };
  }

  /** A reconnect answered 204 (the end was already seen, e.g. before a reload): the stored result. */
  async #finishedEarlier(id, token) {
    const record = await this.get(id, { token });
    if (record.status !== "done") {
      const code = record.error?.code ?? record.status;
      throw new RelayError(code, record.error?.message ?? `The generation ended ${record.status}.`, { id });
    }
    return {
      id,
      status: "done",
      text: record.text ?? "",
      reasoning: record.reasoning ?? "",
      finishReason: record.finish_reason ?? null,
      usage: record.usage ?? null,
    };
  }

  async *#follow(position, open, { signal, onOpen, onRetry }) {
    let failures = 0;
    let first = open !== null;
    let opened = false;
    for (;;) {
      const connection = new Connection(signal, this.idleTimeoutMs);
      let progressed = false;
      let error = null;
      try {
        const response = first ? await open(connection) : await this.#reconnect(position, connection);
        first = false;
        if (!opened) {
          opened = true;
          onOpen?.({ id: position.id, token: position.token });
        }
        if (response === null) {
          position.endedBefore = true;
          return;
        }
        for await (const event of this.#read(response, position, connection)) {
          progressed = true;
          if (TERMINAL.has(event.type)) position.terminal = event;
          yield event;
          if (position.terminal !== null) return;
        }
      } catch (caught) {
        error = caught;
        if (signal?.aborted) throw abortError(signal);
        if (caught instanceof RelayError && !caught.retryable && caught.code !== "idle_timeout") throw caught;
      } finally {
        connection.close();
      }
      failures = progressed ? 1 : failures + 1;
      if (failures > this.retries) {
        throw new RelayError("connection_lost", `Lost the stream of ${position.id} and could not reconnect.`, {
          retryable: true,
          id: position.id,
        });
      }
      const delayMs = this.#backoff(failures);
      onRetry?.({ attempt: failures, delayMs, error });
      await sleep(delayMs, signal);
    }
  }

  #backoff(failures) {
    // The first retry is quick (an API restart behind a load balancer); later ones spread out, with jitter.
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (failures - 1));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  async #post(body, position, connection, idempotencyKey) {
    const headers = this.#headers({ "Content-Type": "application/json", Accept: "text/event-stream" });
    headers["Idempotency-Key"] = idempotencyKey;
    const response = await this.#fetch(new URL("v1/generations", this.baseUrl), {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: connection.signal,
      cache: "no-store",
    });
    if (!response.ok) throw await errorFrom(response);
    position.id = response.headers.get("X-Generation-Id");
    position.token = response.headers.get("X-Generation-Token");
    return response;
  }

  async #reconnect(position, connection) {
    const headers = this.#headers({ Accept: "text/event-stream" });
    if (position.lastEventId) headers["Last-Event-ID"] = position.lastEventId;
    const url = this.#url(`v1/generations/${encodeURIComponent(position.id)}/events`, position.token);
    const response = await this.#fetch(url, { headers, signal: connection.signal, cache: "no-store" });
    if (response.status === 204) return null;
    if (!response.ok) throw await errorFrom(response, position.id);
    return response;
  }

  async *#read(response, position, connection) {
    const reader = response.body.getReader();
    // Stream mode keeps a multi-byte UTF-8 character split across two chunks whole.
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        connection.arm();
        const { done, value } = await reader.read();
        connection.disarm();
        const messages = done
          ? [...parser.push(decoder.decode()), ...parser.end()]
          : parser.push(decoder.decode(value, { stream: true }));
        for (const message of messages) {
          const event = accept(message, position);
          if (event !== null) yield event;
        }
        if (done) return;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  #headers(extra) {
    const headers = { ...extra };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return headers;
  }

  #url(path, token) {
    const url = new URL(path, this.baseUrl);
    // A read token stands in for the key (e.g. a page that was handed only the token).
    if (token && !this.apiKey) url.searchParams.set("token", token);
    return url;
  }

  async #json(method, path, body, token = null) {
    const init = { method, headers: this.#headers({ Accept: "application/json" }), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await this.#fetch(this.#url(path, token), init);
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }
}

/** An SSE message as an event, or null for one already yielded (a replay overlapping what was seen). */
function accept(message, position) {
  if (message.id && position.lastEventId && !isAfter(message.id, position.lastEventId)) return null;
  let payload;
  try {
    payload = JSON.parse(message.data);
  } catch {
    throw new RelayError("bad_event", `The stream sent an event that is not JSON: ${message.data.slice(0, 80)}`);
  }
  if (message.id) position.lastEventId = message.id;
  return { ...payload, id: message.id || null };
}

/**
 * Check text assembled from `content` events (after the last `reset`) against the `done` event's length and
 * sha256; throws RelayError `integrity_mismatch`. For a reader of its own; `generate` already does it.
 */
export async function checkDone(text, done, id = null) {
  const { length, sha256 } = done?.data ?? {};
  if (typeof length === "number" && codePointLength(text) !== length) {
    throw new RelayError("integrity_mismatch", `The assembled text has ${codePointLength(text)} characters, done says ${length}.`, { id });
  }
  // crypto.subtle exists only in secure contexts; over plain http to another host the length check stands alone.
  if (typeof sha256 === "string" && globalThis.crypto?.subtle && (await sha256Hex(text)) !== sha256) {
    throw new RelayError("integrity_mismatch", "The assembled text does not match done's sha256.", { id });
  }
}

/** The async iterator, with the generation's position readable on it (`id`, `token`, `lastEventId`, ...). */
function exposed(iterator, position) {
  for (const name of ["id", "token", "lastEventId", "terminal", "endedBefore"]) {
    Object.defineProperty(iterator, name, { get: () => position[name], enumerable: true });
  }
  return iterator;
}
