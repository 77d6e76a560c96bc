// The `webhook` example driver in JavaScript: behaves exactly like examples/webhook (Rust).
// POSTs each transaction's canonical JSON to `url=`, signed per Standard Webhooks:
//   webhook-id: the transaction id (stable across retries: receivers deduplicate on it)
//   webhook-timestamp: unix seconds
//   webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>
// Args: url= (required), secret=whsec_<base64> (optional: unsigned without it),
// http_timeout_msecs= (default 5000). 5xx, 408, 429 (Retry-After honoured), timeouts and
// connection errors are retryable; other statuses and sandbox refusals are permanent.
// Built for the world push-driver-fixed-begin: it wants every event of every transaction,
// says so once (`fixedWants`, exported as `fixedBegin`), and mailpush skips begin-txn.
import { defineDriver, fixedBeginOf, http, log, decodeWebhookSecret, signWebhook, failureFromHttp } from '../../drivers/sdk-js/index.js';

export const driver = defineDriver({
  init(args) {
    this.url = args.require('url');
    if (!/^https?:\/\//.test(this.url)) throw new Error(`url must be http:// or https://, got ${this.url}`);
    const secret = args.get('secret');
    this.key = secret === undefined ? undefined : decodeWebhookSecret(secret);
    const t = args.get('http_timeout_msecs');
    if (t !== undefined && !/^\d+$/.test(t)) throw new Error(`http_timeout_msecs=${t}: expected milliseconds`);
    this.timeoutMs = t === undefined ? 5000 : Number(t);
  },

  fixedWants() { return 'all'; },

  async deliver(txn) {
    const timestamp = String(Math.floor(Date.now() / 1000));
    /** @type {[string, string][]} */
    const headers = [
      ['content-type', 'application/json'],
      ['webhook-id', txn.id],
      ['webhook-timestamp', timestamp],
    ];
    if (this.key) headers.push(['webhook-signature', await signWebhook(this.key, txn.id, timestamp, txn.json)]);
    let outcome;
    try {
      outcome = http.send({ method: 'POST', url: this.url, headers, body: txn.json, timeoutMs: this.timeoutMs });
    } catch (e) {
      outcome = e; // an HttpError: refused, timeout, connection, …
    }
    // mailpush's one classification: retry 408, 429 (after Retry-After), 5xx, lost and
    // refused connections and timeouts; give up on other statuses and policy refusals.
    const failure = failureFromHttp('webhook', outcome);
    if (failure) throw failure;
    log.debug(`delivered ${txn.id} (${txn.events.length} events)`);
  },
});

export const fixedBegin = fixedBeginOf(driver);
