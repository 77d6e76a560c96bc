// A JavaScript driver written without mailpush's SDK, as a new user writes one: plain
// `fetch` and uncaught exceptions. `mode=` picks what deliver does:
//   throw        — an uncaught `throw new Error(...)` (the failure must carry its message)
//   fetch-get    — GET `url=` inside try/catch; the catch's message is the failure reason
//   fetch-post   — the same with a POST body
//   log          — console.log / console.error, then success
let mode = 'throw';
let url = '';

export const driver = {
  init(args) {
    for (const [k, v] of args) {
      if (k === 'mode') mode = v;
      if (k === 'url') url = v;
    }
  },
  beginTxn(id, user) {
    return { tag: 'events', val: ['mailbox-create', 'message-new'] };
  },
  async deliver(txn) {
    if (mode === 'throw') {
      throw new Error(`boom in deliver for ${txn.user}`);
    }
    if (mode === 'log') {
      console.log(`console.log: ${txn.id}`);
      console.error(`console.error: ${txn.id}`);
      return;
    }
    const init = mode === 'fetch-post'
      ? { method: 'POST', body: 'x'.repeat(1000), headers: { 'content-type': 'text/plain' } }
      : { method: 'GET' };
    try {
      const resp = await fetch(url, init);
      throw { reason: `fetch answered ${resp.status}`, retryable: false };
    } catch (e) {
      if (e && e.reason) throw e;
      throw { reason: `caught: ${e}`, retryable: true };
    }
  },
};
