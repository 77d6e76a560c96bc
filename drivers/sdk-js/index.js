// mailpush driver SDK for JavaScript (componentize-js / StarlingMonkey).
//
// Write a driver as an ES module that exports `driver`:
//
//   import { defineDriver, log, http, Failure, failureFromHttp } from '../../drivers/sdk-js/index.js';
//   export const driver = defineDriver({
//     init(args) { this.url = args.require('url'); },
//     async deliver(txn) { ... throw Failure.retryable('later') ... },
//   });
//
// and build it with componentize-js against the repository's wit/ (world `push-driver`).
// See README.md beside this file for how results and exceptions reach mailpush.

import * as host from 'mailpush:driver/host@0.1.1';
import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest, OutgoingBody, IncomingBody, RequestOptions } from 'wasi:http/types@0.2.12';

const DISPOSE = Symbol.dispose || Symbol.for('dispose');
const drop = (r) => { try { r && r[DISPOSE] && r[DISPOSE](); } catch (_) { /* already gone */ } };
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Every event name, in the WIT's order (what `wants` returns for "all"). */
export const EVENT_NAMES = Object.freeze([
  'flags-clear', 'flags-set', 'mailbox-create', 'mailbox-delete', 'mailbox-rename',
  'mailbox-subscribe', 'mailbox-unsubscribe', 'message-append', 'message-expunge',
  'message-new', 'message-read', 'message-trash',
]);

// ---------------------------------------------------------------- logging, METADATA

function line(level) {
  return (...parts) => host.log(level, parts.map((p) => (typeof p === 'string' ? p : stringify(p))).join(' '));
}
function stringify(v) {
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  try { return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)); } catch (_) { return String(v); }
}

/** Logging through the host (tagged by mailpush with driver number, name and transaction id). */
export const log = Object.freeze({
  trace: line('trace'), debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error'),
});

/** A METADATA entry of the current transaction's user (read-only), or `undefined`. */
export function metadata(key) {
  const v = host.metadataGet(key);
  return v === null ? undefined : v;
}

// ---------------------------------------------------------------- failures

/** The largest value of a WIT u64. */
const U64_MAX = 18446744073709551615n;

/** A number of milliseconds as a WIT u64: negative is 0, more than a u64 holds (Infinity too) is its maximum. */
function u64Of(ms) {
  if (ms === Infinity) return U64_MAX;
  const b = BigInt(Math.max(0, Math.round(ms)));
  return b > U64_MAX ? U64_MAX : b;
}

/** A failed delivery. Throw it from `deliver` (or return it). */
export class Failure extends Error {
  constructor(reason, retryable, retryAfterMs) {
    super(String(reason));
    this.name = 'Failure';
    this.reason = String(reason);
    this.retryable = !!retryable;
    // Not a number (undefined, null, a boolean, '', 'soon'): no delay of its own.
    const n = typeof retryAfterMs === 'number' || typeof retryAfterMs === 'bigint' ? Number(retryAfterMs)
      : typeof retryAfterMs === 'string' && retryAfterMs.trim() !== '' ? Number(retryAfterMs) : NaN;
    this.retryAfterMs = Number.isNaN(n) ? undefined : Math.max(0, Math.round(n));
  }
  /** A failure that a retry may fix (timeouts, 5xx, …). */
  static retryable(reason, { retryAfterMs } = {}) { return new Failure(reason, true, retryAfterMs); }
  /** A failure no retry will fix (bad request, bad data, policy refusal). */
  static permanent(reason) { return new Failure(reason, false); }
  /** The WIT `failure` record. */
  toRecord() {
    return {
      reason: this.reason,
      retryable: this.retryable,
      retryAfterMs: this.retryAfterMs === undefined ? undefined : u64Of(this.retryAfterMs),
    };
  }
}

// ---------------------------------------------------------------- HTTP over wasi:http

/** Most bytes of a response body read. */
export const MAX_RESPONSE_BODY = 1 << 20;

/** Why a request produced no response. `kind`: invalid-url | refused | timeout | connection | other. */
export class HttpError extends Error {
  constructor(kind, message, code) {
    super(`${HttpError.describe(kind)}: ${message}`);
    this.name = 'HttpError';
    this.kind = kind;
    /** The wasi:http error-code tag when the host gave one, e.g. `HTTP-request-denied`. */
    this.code = code;
  }
  static describe(kind) {
    return {
      'invalid-url': 'invalid URL', refused: 'request refused by the sandbox', timeout: 'timeout',
      connection: 'connection failed', other: 'HTTP error',
    }[kind] || kind;
  }
  /** Whether a retry later may succeed (mailpush's classification: timeouts and connection errors). */
  get retryable() { return this.kind === 'timeout' || this.kind === 'connection'; }
}

const REFUSED = new Set(['HTTP-request-denied', 'destination-IP-prohibited', 'HTTP-request-body-size']);
const TIMEOUT = new Set(['connection-timeout', 'connection-read-timeout', 'connection-write-timeout',
  'HTTP-response-timeout', 'DNS-timeout']);
const CONNECTION = new Set(['connection-refused', 'connection-terminated', 'connection-limit-reached',
  'destination-unavailable', 'destination-not-found', 'DNS-error', 'HTTP-protocol-error',
  'HTTP-response-incomplete', 'TLS-protocol-error', 'TLS-alert-received']);

// The error code as the Rust SDK writes it (`{e:?}`): `HTTP-request-denied` → `ErrorCode::HttpRequestDenied`.
function codeText(code) {
  if (!code || typeof code !== 'object') return String(code);
  const name = String(code.tag).split('-').map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase()).join('');
  return code.val === undefined || code.val === null ? `ErrorCode::${name}` : `ErrorCode::${name}(${stringify(code.val)})`;
}
/** A wasi:http error-code, by mailpush's one classification. */
function classify(code) {
  const tag = code && code.tag;
  const kind = REFUSED.has(tag) ? 'refused' : TIMEOUT.has(tag) ? 'timeout' : CONNECTION.has(tag) ? 'connection' : 'other';
  return new HttpError(kind, codeText(code), tag);
}
const payload = (e) => (e && Object.prototype.hasOwnProperty.call(e, 'payload') ? e.payload : undefined);

/** A response: `status`, `headers` ([name, value] pairs, names lower case), `body` (Uint8Array). */
export class Response {
  constructor(status, headers, body) { this.status = status; this.headers = headers; this.body = body; }
  get ok() { return this.status >= 200 && this.status <= 299; }
  /** The first value of a header (name case-insensitive). */
  header(name) { const n = name.toLowerCase(); const h = this.headers.find(([k]) => k === n); return h ? h[1] : undefined; }
  text() { return fromUtf8.decode(this.body); }
  json() { return JSON.parse(this.text()); }
}

const METHODS = { GET: 'get', POST: 'post', PUT: 'put', DELETE: 'delete', PATCH: 'patch', HEAD: 'head', OPTIONS: 'options', TRACE: 'trace', CONNECT: 'connect' };

function waitFor(future) {
  for (;;) {
    const r = future.get();
    if (r !== undefined && r !== null) {
      if (r.tag === 'err') throw new HttpError('other', 'response already taken');
      if (r.val.tag === 'err') throw classify(r.val.val);
      return r.val.val;
    }
    const p = future.subscribe();
    p.block();
    drop(p);
  }
}

function writeBody(outBody, bytes) {
  const stream = outBody.write();
  try {
    for (let i = 0; i < bytes.length; i += 4096) stream.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
  } catch (e) {
    throw new HttpError('connection', `writing body: ${codeText(payload(e) ?? e)}`);
  } finally {
    drop(stream); // the stream is a child of the body: drop it before finishing
  }
  try { OutgoingBody.finish(outBody, undefined); } catch (e) { throw classify(payload(e)); }
}

function readBody(incoming) {
  let body;
  try { body = incoming.consume(); } catch (_) { return new Uint8Array(0); }
  const chunks = []; let total = 0;
  let stream;
  try {
    stream = body.stream();
    for (;;) {
      let chunk;
      try { chunk = stream.blockingRead(65536n); } catch (e) {
        const p = payload(e);
        if (p && p.tag === 'closed') break;
        throw new HttpError('connection', `reading response: ${p && p.val && p.val.toDebugString ? p.val.toDebugString() : codeText(p)}`);
      }
      chunks.push(chunk); total += chunk.length;
      if (total >= MAX_RESPONSE_BODY) break;
    }
  } finally {
    drop(stream);
    try { IncomingBody.finish(body); } catch (_) { /* trailers not wanted */ }
  }
  const out = new Uint8Array(Math.min(total, MAX_RESPONSE_BODY));
  let at = 0;
  for (const c of chunks) { const n = Math.min(c.length, out.length - at); out.set(c.subarray(0, n), at); at += n; }
  return out;
}

/**
 * Sends a request and reads the whole response (body capped at 1 MiB). Blocking: waiting
 * does not count against the driver's CPU deadline. Throws `HttpError` when there is no
 * response; a response of any status is returned.
 *
 * opts: { method = 'GET' (or 'POST' with a body), url, headers (object or [name, value] pairs),
 *         body (string | Uint8Array), json (any: sent as JSON, content-type application/json),
 *         timeoutMs (connect and first byte; capped by the sandbox) }
 */
function send(opts) {
  let { method, url, headers = [], body, json, timeoutMs } = opts;
  if (json !== undefined) body = JSON.stringify(json);
  const bytes = body === undefined || body === null ? new Uint8Array(0) : typeof body === 'string' ? utf8.encode(body) : body;
  method = (method || (bytes.length ? 'POST' : 'GET')).toUpperCase();
  const m = /^(https?):\/\/([^/?#]*)([^#]*)/i.exec(url || '');
  if (!m) throw new HttpError('invalid-url', `${url}: only http:// and https:// URLs`);
  const scheme = m[1].toLowerCase() === 'https' ? { tag: 'HTTPS' } : { tag: 'HTTP' };
  const authority = m[2].split('@').pop(); // userinfo is never sent in the authority
  if (!authority) throw new HttpError('invalid-url', `${url}: no host`);
  const path = m[3] === '' ? '/' : m[3].startsWith('?') ? `/${m[3]}` : m[3];

  const list = (Array.isArray(headers) ? headers : Object.entries(headers)).map(([k, v]) => [String(k), String(v)]);
  if (json !== undefined && !list.some(([k]) => k.toLowerCase() === 'content-type')) list.push(['content-type', 'application/json']);
  // A known length (no chunked encoding): what most receivers expect.
  if (!list.some(([k]) => k.toLowerCase() === 'content-length') && (bytes.length || method === 'POST' || method === 'PUT')) {
    list.push(['content-length', String(bytes.length)]);
  }
  let fields;
  try { fields = Fields.fromList(list.map(([k, v]) => [k, utf8.encode(v)])); } catch (e) {
    throw new HttpError('other', `bad header: ${codeText(payload(e) ?? e)}`);
  }
  const req = new OutgoingRequest(fields);
  const bad = (what, f) => { try { f(); } catch (_) { throw new HttpError('invalid-url', `${url}: invalid ${what}`); } };
  bad('method', () => req.setMethod(METHODS[method] ? { tag: METHODS[method] } : { tag: 'other', val: method }));
  bad('scheme', () => req.setScheme(scheme));
  bad('host', () => req.setAuthority(authority));
  bad('path', () => req.setPathWithQuery(path));
  const outBody = req.body();
  let options;
  if (timeoutMs != null) {
    let ns = u64Of(Number(timeoutMs)) * 1000000n;
    if (ns > U64_MAX) ns = U64_MAX;
    options = new RequestOptions();
    options.setConnectTimeout(ns); options.setFirstByteTimeout(ns); options.setBetweenBytesTimeout(ns);
  }
  let future;
  try { future = handle(req, options); } catch (e) { drop(outBody); throw classify(payload(e)); }
  try {
    try { writeBody(outBody, bytes); } catch (e) {
      // A refusal or a failed connection shows in the response future: prefer its reason.
      waitFor(future);
      throw e;
    }
    const incoming = waitFor(future);
    try {
      const status = incoming.status();
      const hdrs = incoming.headers();
      const headerList = hdrs.entries().map(([k, v]) => [k.toLowerCase(), fromUtf8.decode(v)]);
      drop(hdrs);
      return new Response(status, headerList, readBody(incoming));
    } finally { drop(incoming); }
  } finally { drop(future); }
}

/** A small blocking HTTP client over wasi:http/outgoing-handler. */
export const http = Object.freeze({
  send,
  /** POST a JSON value. */
  postJson: (url, value, opts = {}) => send({ ...opts, method: 'POST', url, json: value }),
});

/** A `Retry-After` value in milliseconds: delay-seconds or an HTTP date (past: 0). */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return undefined;
  const v = String(value).trim();
  if (/^[0-9]+$/.test(v)) {
    // More seconds than a u64 holds is no value (as in Rust); the milliseconds are capped
    // to a u64 when the failure is recorded.
    return BigInt(v) > U64_MAX ? undefined : Number(v) * 1000;
  }
  // An HTTP date names a month and a day: a bare number with a sign or a point ("-1",
  // "1.5"), which Date.parse would take for a year, is none.
  if (!/[A-Za-z]{3}/.test(v)) return undefined;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * The failure (if any) of a request's outcome, by mailpush's one classification:
 * `null` for a 2xx response; retryable (with the server's Retry-After) for 408, 429, 5xx,
 * timeouts and connection errors; permanent for other statuses and policy refusals.
 * `outcome` is a Response or an error thrown by `http.send`. `what` names the request.
 */
export function failureFromHttp(what, outcome) {
  if (outcome instanceof Response) {
    const s = outcome.status;
    if (s >= 200 && s <= 299) return null;
    const reason = `${what} answered ${s}`;
    if (s === 408 || s === 429 || (s >= 500 && s <= 599)) {
      return Failure.retryable(reason, { retryAfterMs: parseRetryAfter(outcome.header('retry-after')) });
    }
    return Failure.permanent(reason);
  }
  if (outcome instanceof HttpError) {
    return outcome.retryable ? Failure.retryable(`${what}: ${outcome.message}`) : Failure.permanent(`${what}: ${outcome.message}`);
  }
  if (outcome instanceof Failure) return outcome;
  return Failure.permanent(`${what}: ${outcome && outcome.message ? outcome.message : String(outcome)}`);
}

// ---------------------------------------------------------------- Standard Webhooks signing

function b64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
function bytesToB64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

/** The longest HMAC key mailpush's `hmac-sha256` takes (a longer one traps). */
export const MAX_HMAC_KEY_BYTES = 4096;

/**
 * The key bytes of a `whsec_<base64>` secret; throws an Error naming the problem, so
 * `init` refuses a secret the host's HMAC could not take (over MAX_HMAC_KEY_BYTES)
 * instead of every delivery trapping.
 */
export function decodeWebhookSecret(secret) {
  if (!String(secret).startsWith('whsec_')) throw new Error('secret must look like whsec_<base64>');
  const b64 = String(secret).slice(6);
  if (b64 === '') throw new Error('secret: no key after whsec_');
  // Padded, canonical base64 only (as the Rust and Python SDKs take it): one secret, one key.
  const invalid = () => new Error('secret: the part after whsec_ is not valid base64');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw invalid();
  let key;
  try { key = b64ToBytes(b64); } catch (_) { throw invalid(); }
  if (bytesToB64(key) !== b64) throw invalid();
  if (key.length > MAX_HMAC_KEY_BYTES) throw new Error(`secret: ${key.length} bytes of key, at most ${MAX_HMAC_KEY_BYTES}`);
  return key;
}

/**
 * HMAC-SHA256, computed by mailpush (`host.hmac-sha256`, mailpush:driver@0.1.1) with the
 * CPU's SHA instructions where it has them. At most 16 MiB of data and 4 KiB of key: more traps. Returns a
 * Promise, as it did when it used WebCrypto.
 */
export async function hmacSha256(key, data) {
  return new Uint8Array(host.hmacSha256(key, typeof data === 'string' ? utf8.encode(data) : data));
}

/**
 * The Standard Webhooks `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
 * `secret` is a `whsec_<base64>` string or the key bytes. Async (like `hmacSha256`).
 */
export async function signWebhook(secret, id, timestamp, body) {
  const key = typeof secret === 'string' ? decodeWebhookSecret(secret) : secret;
  const b = typeof body === 'string' ? utf8.encode(body) : body;
  const prefix = utf8.encode(`${id}.${timestamp}.`);
  const msg = new Uint8Array(prefix.length + b.length);
  msg.set(prefix); msg.set(b, prefix.length);
  return `v1,${bytesToB64(await hmacSha256(key, msg))}`;
}

// ---------------------------------------------------------------- the driver export

/** The driver's config-line arguments (mailpush's sandbox keys removed). */
export class Args {
  constructor(pairs) { this.pairs = pairs.map(([k, v]) => [k, v]); }
  /** The value of `key` (`''` for a bare flag), the last one when repeated, or undefined. */
  get(key) { for (let i = this.pairs.length - 1; i >= 0; i--) if (this.pairs[i][0] === key) return this.pairs[i][1]; return undefined; }
  has(key) { return this.get(key) !== undefined; }
  /** The value of a required key; throws the init error naming it. */
  require(key) { const v = this.get(key); if (!v) throw new Error(`missing required argument ${key}=…`); return v; }
  toObject() { return Object.fromEntries(this.pairs); }
}

const HANDLERS = {
  'message-new': 'onMessageNew', 'message-append': 'onMessageAppend', 'message-expunge': 'onMessageExpunge',
  'message-read': 'onMessageRead', 'message-trash': 'onMessageTrash', 'flags-set': 'onFlagsSet',
  'flags-clear': 'onFlagsClear', 'mailbox-create': 'onMailboxCreate', 'mailbox-delete': 'onMailboxDelete',
  'mailbox-rename': 'onMailboxRename', 'mailbox-subscribe': 'onMailboxSubscribe',
  'mailbox-unsubscribe': 'onMailboxUnsubscribe',
};

const FIXED = Symbol('mailpush.fixedWants');

/** The WIT `begin` of a `wants`/`fixedWants` answer; an answer of another shape is a bug in the driver: logged, then it traps. */
function beginOf(w, where) {
  if (w === 'skip' || w === false) return { tag: 'skip' };
  if (w === 'all' || w === true) return { tag: 'events', val: [...EVENT_NAMES] };
  const show = (x) => { try { return JSON.stringify(x) ?? String(x); } catch (_) { return String(x); } };
  const bad = (what) => {
    const e = new Error(`${where} returned ${what}: expected 'all', 'skip' or an array of event names (${EVENT_NAMES.join(', ')})`);
    log.error(e.message);
    throw e;
  };
  if (w && typeof w.then === 'function') bad('a Promise (it must not be async)');
  if (typeof w === 'string' || w == null || typeof w[Symbol.iterator] !== 'function') bad(show(w));
  const names = [...w];
  for (const n of names) if (!EVENT_NAMES.includes(n)) bad(`an unknown event name ${show(n)}`);
  return { tag: 'events', val: names };
}

function failed(f) {
  log.debug(`deliver failed: ${f.reason} (${f.retryable ? 'retryable' : 'permanent'}${f.retryAfterMs === undefined ? '' : `, retry after ${f.retryAfterMs} ms`})`);
  return { tag: 'err', val: f.toRecord() };
}

function errText(e) { return e instanceof Error ? e.message : typeof e === 'string' ? e : stringify(e); }

/**
 * Makes the `driver` export componentize-js needs from a driver object:
 *
 *   init(args: Args)                 throw (an Error or a string) to refuse the configuration
 *   wants(txn: {id, user})           'all' (default) | 'skip' | EventName[]; returning
 *                                    undefined or null is 'all', with a warning; any other
 *                                    value (a string, a Promise) is logged and traps
 *   fixedWants()                     the answer to every transaction's `wants`, asked once
 *                                    at load after `init` through a `fixedBegin` export (see
 *                                    `fixedBeginOf`); undefined or null (default) keeps `wants`
 *                                    asked per transaction. Without `wants`, it also answers
 *                                    each transaction when there is no `fixedBegin` export
 *   deliver(txn: Transaction)        may be async; throw (or return) a Failure to fail it;
 *                                    an uncaught HttpError becomes failureFromHttp('request', e);
 *                                    any other exception is logged and traps (like a Rust panic)
 *   onMessageNew(txn, m, json), …    per-event handlers, used when there is no `deliver`
 *
 * `this` in every method is the driver object; with the default `instance=fresh` it is
 * new for each transaction.
 */
export function defineDriver(impl) {
  const self = impl;
  return {
    async init(pairs) {
      try {
        if (self.init) await self.init(new Args(pairs));
      } catch (e) {
        return { tag: 'err', val: errText(e) };
      }
      return { tag: 'ok', val: undefined };
    },
    beginTxn(id, user) {
      if (self.wants) {
        const w = self.wants({ id, user });
        // A wants that returns nothing (a path without `return`) takes every event, as
        // the default does, and says so: it never skips a transaction silently.
        if (w == null) {
          log.warn(`wants returned ${w}: every event is delivered (return 'all', 'skip' or a list)`);
          return beginOf('all', 'wants');
        }
        return beginOf(w, 'wants');
      }
      // Without wants, a fixed answer holds for every transaction also when the
      // component is built without the fixedBegin export (the push-driver world).
      const fixed = self.fixedWants ? self.fixedWants() : undefined;
      return beginOf(fixed == null ? 'all' : fixed, 'fixedWants');
    },
    [FIXED]() {
      const w = self.fixedWants ? self.fixedWants() : undefined;
      // null, like undefined, is "no fixed answer" (as None is in Rust and Python);
      // only 'skip' or false declares that every transaction is skipped.
      return w == null ? undefined : beginOf(w, 'fixedWants');
    },
    async deliver(txn) {
      try {
        let r;
        if (self.deliver) r = await self.deliver(txn);
        else {
          const info = { id: txn.id, user: txn.user };
          for (const rec of txn.events) {
            const h = self[HANDLERS[rec.event.tag]];
            if (h) { r = await h.call(self, info, rec.event.val, rec.json); if (r instanceof Failure) break; }
          }
        }
        if (r instanceof Failure) return failed(r);
        return { tag: 'ok', val: undefined };
      } catch (e) {
        if (e instanceof Failure) return failed(e);
        if (e instanceof HttpError) return failed(failureFromHttp('request', e));
        // Like a Rust panic: the message goes to the log, then the call traps.
        log.error(`uncaught exception in deliver: ${errText(e)}${e && e.stack ? `\n${e.stack}` : ''}`);
        throw e instanceof Error ? e : new Error(errText(e));
      }
    },
  };
}

/**
 * The `fixedBegin` export (mailpush:driver@0.1.1) of a driver made by `defineDriver`:
 * mailpush asks it once at load, after `init`, and when the driver's `fixedWants()`
 * answers, stops calling `beginTxn` (one call into the component fewer per transaction).
 *
 *   export const driver = defineDriver({ ..., fixedWants() { return 'all'; } });
 *   export const fixedBegin = fixedBeginOf(driver);
 *
 * Build with `--world-name push-driver-fixed-begin` (the plain `push-driver` world has no
 * such export, and keeps working).
 */
export function fixedBeginOf(driverExport) {
  if (typeof driverExport[FIXED] !== 'function') throw new Error('fixedBeginOf: pass the object defineDriver returned');
  return { answer() { return driverExport[FIXED](); } };
}
