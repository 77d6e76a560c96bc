// Types of the mailpush driver SDK for JavaScript. The event types mirror the WIT records
// of mailpush:driver/types@0.1.1 as componentize-js presents them: kebab-case names
// become camelCase fields, `option<T>` is `T | undefined`, `s64`/`u64` are `bigint`,
// variants are `{ tag, val }` objects.

/** The 12 event kinds (WIT `event-name`). */
export type EventName =
  | 'flags-clear' | 'flags-set' | 'mailbox-create' | 'mailbox-delete' | 'mailbox-rename'
  | 'mailbox-subscribe' | 'mailbox-unsubscribe' | 'message-append' | 'message-expunge'
  | 'message-new' | 'message-read' | 'message-trash';

export const EVENT_NAMES: readonly EventName[];

/** Identifies one message. */
export interface MessageRef {
  /** Mailbox name, UTF-8 and namespace-prefixed, e.g. `INBOX`. */
  mailbox: string;
  /** IMAP UID (0 when unknown). */
  uid: number;
  /** The mailbox's UIDVALIDITY. */
  uidValidity: number;
}

/** A new message (MessageNew / MessageAppend); the source sends what it knows. */
export interface NewMessage {
  message: MessageRef;
  /** `Date` header as unix seconds (UTC). */
  date?: bigint;
  /** The `Date` header's zone offset in minutes east of UTC. */
  tz?: number;
  /** Raw `From` header value. */
  from?: string;
  to?: string;
  subject?: string;
  subjectUtf8?: string;
  fromAddress?: string;
  fromDisplayName?: string;
  toAddress?: string;
  toDisplayName?: string;
  messageId?: string;
  /** Up to 200 characters of the first text part. */
  snippet?: string;
  flags?: string[];
  keywords?: string[];
  /** The mailbox's unseen count after the event. */
  unseen?: number;
}

export interface FlagsSet { message: MessageRef; flags: string[]; keywords: string[]; }
export interface FlagsClear {
  message: MessageRef; flags: string[]; keywords: string[];
  flagsOld?: string[]; keywordsOld?: string[];
}
export interface MailboxRename { mailbox: string; mailboxOld: string; }

/** One event, typed (WIT variant `event`). */
export type Event =
  | { tag: 'message-new'; val: NewMessage }
  | { tag: 'message-append'; val: NewMessage }
  | { tag: 'message-expunge'; val: MessageRef }
  | { tag: 'message-read'; val: MessageRef }
  | { tag: 'message-trash'; val: MessageRef }
  | { tag: 'flags-set'; val: FlagsSet }
  | { tag: 'flags-clear'; val: FlagsClear }
  | { tag: 'mailbox-create'; val: string }
  | { tag: 'mailbox-delete'; val: string }
  | { tag: 'mailbox-rename'; val: MailboxRename }
  | { tag: 'mailbox-subscribe'; val: string }
  | { tag: 'mailbox-unsubscribe'; val: string };

/** One event in both forms: typed, and as its canonical JSON. */
export interface EventRecord { event: Event; json: string; }

/** One transaction (only the wanted events). */
export interface Transaction {
  /** Unique id; deliveries are at-least-once: deduplicate on it. */
  id: string;
  user: string;
  events: EventRecord[];
  /** The whole transaction's canonical JSON. */
  json: string;
}

/** The WIT `failure` record as componentize-js lowers it. */
export interface FailureRecord { reason: string; retryable: boolean; retryAfterMs?: bigint; }

/** The transaction being handled. */
export interface TxnInfo { id: string; user: string; }

// ---------------------------------------------------------------- logging, METADATA

export const log: Readonly<{
  trace(...parts: unknown[]): void;
  debug(...parts: unknown[]): void;
  info(...parts: unknown[]): void;
  warn(...parts: unknown[]): void;
  error(...parts: unknown[]): void;
}>;

/** A METADATA entry of the current transaction's user (read-only), or undefined. */
export function metadata(key: string): string | undefined;

// ---------------------------------------------------------------- failures

/** A failed delivery: throw (or return) it from `deliver`. */
export class Failure extends Error {
  constructor(reason: string, retryable: boolean, retryAfterMs?: number);
  readonly reason: string;
  readonly retryable: boolean;
  /** Milliseconds the server asked to wait (HTTP Retry-After). */
  readonly retryAfterMs?: number;
  static retryable(reason: string, opts?: { retryAfterMs?: number }): Failure;
  static permanent(reason: string): Failure;
  toRecord(): FailureRecord;
}

// ---------------------------------------------------------------- HTTP

export type HttpErrorKind = 'invalid-url' | 'refused' | 'timeout' | 'connection' | 'other';

/** Why a request produced no response. */
export class HttpError extends Error {
  constructor(kind: HttpErrorKind, message: string, code?: string);
  readonly kind: HttpErrorKind;
  /** The wasi:http error-code tag, e.g. `HTTP-request-denied`, `connection-refused` (the message has `ErrorCode::HttpRequestDenied`, as the Rust SDK writes it). */
  readonly code?: string;
  /** Timeouts and connection errors. */
  readonly retryable: boolean;
  /** The words a kind's messages begin with, e.g. `connection failed` for `connection`. */
  static describe(kind: HttpErrorKind): string;
}

export class Response {
  constructor(status: number, headers: [string, string][], body: Uint8Array);
  readonly status: number;
  /** [name, value] pairs, names lower case. */
  readonly headers: [string, string][];
  readonly body: Uint8Array;
  readonly ok: boolean;
  header(name: string): string | undefined;
  text(): string;
  json(): any;
}

export interface SendOptions {
  /** Default: POST with a body, GET without. */
  method?: string;
  url: string;
  headers?: Record<string, string> | [string, string][];
  body?: string | Uint8Array;
  /** Sent as JSON (content-type application/json unless given). */
  json?: unknown;
  /** Connect and first-byte timeout (capped by the sandbox). */
  timeoutMs?: number;
}

export const MAX_RESPONSE_BODY: number;

export const http: Readonly<{
  /** Blocking request over wasi:http; throws HttpError when there is no response. */
  send(opts: SendOptions): Response;
  postJson(url: string, value: unknown, opts?: Omit<SendOptions, 'url' | 'json' | 'method'>): Response;
}>;

/** A Retry-After value (delay-seconds or HTTP date) in milliseconds. */
export function parseRetryAfter(value: string | undefined, now?: number): number | undefined;

/** mailpush's classification of a request outcome: null for 2xx. */
export function failureFromHttp(what: string, outcome: Response | HttpError | Failure | unknown): Failure | null;

// ---------------------------------------------------------------- Standard Webhooks

/** The longest key `hmacSha256` takes (the host traps on a longer one). */
export const MAX_HMAC_KEY_BYTES: 4096;
/** The key of a `whsec_<base64>` secret; throws naming the problem (also a key over MAX_HMAC_KEY_BYTES). */
export function decodeWebhookSecret(secret: string): Uint8Array;
/** HMAC-SHA256 by the host (`host.hmac-sha256`, 0.1.1): at most 16 MiB of data, 4 KiB of key. */
export function hmacSha256(key: Uint8Array, data: string | Uint8Array): Promise<Uint8Array>;
/** `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. */
export function signWebhook(secret: string | Uint8Array, id: string, timestamp: string | number,
  body: string | Uint8Array): Promise<string>;

// ---------------------------------------------------------------- the driver

export class Args {
  constructor(pairs: [string, string][]);
  readonly pairs: [string, string][];
  get(key: string): string | undefined;
  has(key: string): boolean;
  require(key: string): string;
  toObject(): Record<string, string>;
}

type Result<T> = T | Promise<T>;
type Handler<T> = (txn: TxnInfo, value: T, json: string) => Result<void | Failure>;

export interface DriverImpl {
  /** Throw (an Error or a string) to refuse the configuration. */
  init?(args: Args): Result<void>;
  /** Default: `fixedWants()` when it answers, else 'all'. Returning undefined or null is 'all', with a warning. */
  wants?(txn: TxnInfo): 'all' | 'skip' | EventName[] | undefined | null;
  /**
   * The answer to every `wants`, asked once at load (with a `fixedBegin` export); undefined
   * or null: none. Without `wants`, it also answers each transaction (also without a
   * `fixedBegin` export).
   */
  fixedWants?(): 'all' | 'skip' | EventName[] | undefined | null;
  /** Throw or return a Failure to fail the transaction. */
  deliver?(txn: Transaction): Result<void | Failure>;
  onMessageNew?: Handler<NewMessage>;
  onMessageAppend?: Handler<NewMessage>;
  onMessageExpunge?: Handler<MessageRef>;
  onMessageRead?: Handler<MessageRef>;
  onMessageTrash?: Handler<MessageRef>;
  onFlagsSet?: Handler<FlagsSet>;
  onFlagsClear?: Handler<FlagsClear>;
  onMailboxCreate?: Handler<string>;
  onMailboxDelete?: Handler<string>;
  onMailboxRename?: Handler<MailboxRename>;
  onMailboxSubscribe?: Handler<string>;
  onMailboxUnsubscribe?: Handler<string>;
  [key: string]: unknown;
}

/** The WIT `driver` export as componentize-js expects it. */
export interface DriverExport {
  init(args: [string, string][]): Promise<{ tag: 'ok'; val: undefined } | { tag: 'err'; val: string }>;
  beginTxn(id: string, user: string): { tag: 'skip' } | { tag: 'events'; val: EventName[] };
  deliver(txn: Transaction): Promise<{ tag: 'ok'; val: undefined } | { tag: 'err'; val: FailureRecord }>;
}

declare const definedByDefineDriver: unique symbol;

/** What `defineDriver` returns: the `driver` export, which `fixedBeginOf` also takes. */
export interface DefinedDriver extends DriverExport {
  readonly [definedByDefineDriver]: true;
}

/** `export const driver = defineDriver({...})`. `this` in each method is the object given. */
export function defineDriver<T extends DriverImpl>(impl: T & ThisType<T & Record<string, any>>): DefinedDriver;

/** The WIT `fixed-begin` export (world `push-driver-fixed-begin`, 0.1.1). */
export interface FixedBeginExport {
  answer(): { tag: 'skip' } | { tag: 'events'; val: EventName[] } | undefined;
}

/** `export const fixedBegin = fixedBeginOf(driver)`: the driver's `fixedWants()`, asked once at load. */
export function fixedBeginOf(driverExport: DefinedDriver): FixedBeginExport;
