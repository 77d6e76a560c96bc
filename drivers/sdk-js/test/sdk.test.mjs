// The SDK's own logic, run by node without building a component:
//   node --import ./test/register.mjs --test test/sdk.test.mjs
// (tests/tests/languages.rs runs it wherever the JavaScript toolchain is installed).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  defineDriver, fixedBeginOf, Failure, HttpError, EVENT_NAMES, MAX_HMAC_KEY_BYTES,
  decodeWebhookSecret, signWebhook, Args,
} from '../index.js';

const answer = (impl) => fixedBeginOf(defineDriver(impl)).answer();

test('no fixed answer: fixedWants absent, returning undefined or null', () => {
  assert.equal(answer({}), undefined);
  assert.equal(answer({ fixedWants() { return undefined; } }), undefined);
  // null is "no fixed answer", as None is in Rust and Python: not "skip everything".
  assert.equal(answer({ fixedWants() { return null; } }), undefined);
});

test('fixed answers: skip, all, a list', () => {
  assert.deepEqual(answer({ fixedWants() { return 'skip'; } }), { tag: 'skip' });
  assert.deepEqual(answer({ fixedWants() { return false; } }), { tag: 'skip' });
  assert.deepEqual(answer({ fixedWants() { return 'all'; } }), { tag: 'events', val: [...EVENT_NAMES] });
  assert.deepEqual(
    answer({ fixedWants() { return ['message-new']; } }),
    { tag: 'events', val: ['message-new'] },
  );
});

test('fixedBeginOf takes only what defineDriver returned', () => {
  assert.throws(() => fixedBeginOf({ init() {}, beginTxn() {}, deliver() {} }), /pass the object defineDriver returned/);
});

test('beginTxn asks wants per transaction, all by default', () => {
  assert.deepEqual(defineDriver({}).beginTxn('t1', 'u'), { tag: 'events', val: [...EVENT_NAMES] });
  const seen = [];
  const d = defineDriver({ wants(t) { seen.push(t); return t.user === 'skip-me' ? 'skip' : ['flags-set']; } });
  assert.deepEqual(d.beginTxn('t1', 'skip-me'), { tag: 'skip' });
  assert.deepEqual(d.beginTxn('t2', 'u'), { tag: 'events', val: ['flags-set'] });
  assert.deepEqual(seen, [{ id: 't1', user: 'skip-me' }, { id: 't2', user: 'u' }]);
});

test('init: a thrown error or string refuses the configuration, naming it', async () => {
  const d = defineDriver({ init(args) { args.require('url'); } });
  assert.deepEqual(await d.init([]), { tag: 'err', val: 'missing required argument url=…' });
  assert.deepEqual(await d.init([['url', 'http://h/']]), { tag: 'ok', val: undefined });
  assert.deepEqual(await defineDriver({ init() { throw 'no'; } }).init([]), { tag: 'err', val: 'no' });
});

test('deliver: a Failure (returned or thrown) and an HttpError become the failure record', async () => {
  const txn = { id: 't', user: 'u', events: [] };
  const ret = await defineDriver({ deliver() { return Failure.retryable('later', { retryAfterMs: 1500 }); } }).deliver(txn);
  assert.deepEqual(ret, { tag: 'err', val: { reason: 'later', retryable: true, retryAfterMs: 1500n } });
  const thrown = await defineDriver({ deliver() { throw Failure.permanent('bad data'); } }).deliver(txn);
  assert.deepEqual(thrown, { tag: 'err', val: { reason: 'bad data', retryable: false, retryAfterMs: undefined } });
  const http = await defineDriver({ deliver() { throw new HttpError('connection', 'refused'); } }).deliver(txn);
  assert.equal(http.tag, 'err');
  assert.equal(http.val.retryable, true);
  assert.equal(http.val.reason, 'request: connection failed: refused');
  // Anything else is a bug in the driver: it traps (the exception propagates).
  await assert.rejects(defineDriver({ deliver() { throw new TypeError('oops'); } }).deliver(txn), /oops/);
  assert.deepEqual(await defineDriver({ deliver() {} }).deliver(txn), { tag: 'ok', val: undefined });
});

test('Args: the last of a repeated key, flags, required keys', () => {
  const a = new Args([['k', '1'], ['flag', ''], ['k', '2']]);
  assert.equal(a.get('k'), '2');
  assert.equal(a.has('flag'), true);
  assert.equal(a.get('none'), undefined);
  assert.throws(() => a.require('flag'), /missing required argument flag=/);
});

test('webhook secrets: the host HMAC bound, and the Standard Webhooks signature', async () => {
  const big = `whsec_${Buffer.alloc(MAX_HMAC_KEY_BYTES + 1).toString('base64')}`;
  assert.throws(() => decodeWebhookSecret(big), /4097 bytes of key, at most 4096/);
  assert.equal(decodeWebhookSecret(`whsec_${Buffer.alloc(MAX_HMAC_KEY_BYTES).toString('base64')}`).length, 4096);
  assert.throws(() => decodeWebhookSecret('secret'), /whsec_/);
  // The example of the Standard Webhooks specification.
  const sig = await signWebhook(
    'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    'msg_p5jXN8AQM9LWM0D4loKWxJek',
    1614265330,
    '{"test": 2432232314}',
  );
  assert.equal(sig, 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
});

test('wants: undefined is every event, a fixed answer holds without fixedBegin, bad shapes trap', () => {
  const all = { tag: 'events', val: [...EVENT_NAMES] };
  assert.deepEqual(defineDriver({ wants() {} }).beginTxn('t', 'u'), all);
  assert.deepEqual(defineDriver({ wants() { return null; } }).beginTxn('t', 'u'), all);
  // No wants: fixedWants answers each transaction too (a component built without the
  // fixedBegin export would otherwise get every event).
  assert.deepEqual(
    defineDriver({ fixedWants() { return ['message-new']; } }).beginTxn('t', 'u'),
    { tag: 'events', val: ['message-new'] },
  );
  assert.deepEqual(defineDriver({ fixedWants() { return 'skip'; } }).beginTxn('t', 'u'), { tag: 'skip' });
  assert.throws(() => defineDriver({ wants() { return 'message-new'; } }).beginTxn('t', 'u'), /wants returned "message-new"/);
  assert.throws(() => defineDriver({ async wants() { return 'all'; } }).beginTxn('t', 'u'), /must not be async/);
  assert.throws(() => defineDriver({ wants() { return ['message-nu']; } }).beginTxn('t', 'u'), /unknown event name "message-nu"/);
  assert.throws(() => defineDriver({ wants() { return 5n; } }).beginTxn('t', 'u'), /wants returned 5/);
});

test('retry-after: huge, odd and not-a-number values never make deliver throw', async () => {
  const txn = { id: 't', user: 'u', events: [] };
  const record = async (ms) =>
    (await defineDriver({ deliver() { return Failure.retryable('later', { retryAfterMs: ms }); } }).deliver(txn)).val.retryAfterMs;
  assert.equal(await record(Infinity), 18446744073709551615n);
  assert.equal(await record(1e30), 18446744073709551615n);
  assert.equal(await record(-5), 0n);
  assert.equal(await record('soon'), undefined);
  assert.equal(await record(''), undefined);
  assert.equal(await record(true), undefined);
  assert.equal(await record('250'), 250n);
  assert.equal(await record(NaN), undefined);
  const { parseRetryAfter } = await import('../index.js');
  assert.equal(parseRetryAfter('7'), 7000);
  assert.equal(parseRetryAfter('9'.repeat(400)), undefined);
  assert.equal(parseRetryAfter('18446744073709551616'), undefined);
  assert.equal(parseRetryAfter('-1'), undefined);
  assert.equal(parseRetryAfter('1.5'), undefined);
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:00 GMT', Date.parse('Wed, 21 Oct 2015 07:27:00 GMT')), 60000);
});

test('webhook secrets: padded, canonical base64 and a key, as in Rust and Python', () => {
  for (const bad of ['whsec_abc', 'whsec_YR==', 'whsec_YQ', 'whsec_']) {
    assert.throws(() => decodeWebhookSecret(bad), /whsec_/, bad);
  }
  assert.deepEqual([...decodeWebhookSecret('whsec_YQ==')], [0x61]);
});
