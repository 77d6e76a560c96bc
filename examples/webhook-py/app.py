"""The `webhook` example driver in Python: behaves exactly like examples/webhook (Rust).

POSTs each transaction's canonical JSON to ``url=``, signed per Standard Webhooks:
``webhook-id`` (the transaction id), ``webhook-timestamp`` (unix seconds),
``webhook-signature`` (``v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``).
Args: ``url=`` (required), ``secret=whsec_<base64>`` (optional: unsigned without it),
``http_timeout_msecs=`` (default 5000). 5xx, 408, 429 (Retry-After honoured), timeouts and
connection errors are retryable; other statuses and sandbox refusals are permanent.
"""

import time

from mailpush_driver import (DriverBase, HttpError, InitError, decode_webhook_secret, export,
                             export_fixed_begin, failure_from_http, http, log, sign_webhook)


class Webhook(DriverBase):
    def __init__(self, args):
        self.url = args.require("url")
        if not (self.url.startswith("http://") or self.url.startswith("https://")):
            raise InitError(f"url must be http:// or https://, got {self.url}")
        secret = args.get("secret")
        self.key = None if secret is None else decode_webhook_secret(secret)
        t = args.get("http_timeout_msecs")
        if t is not None and not t.isdigit():
            raise InitError(f"http_timeout_msecs={t}: expected milliseconds")
        self.timeout_ms = 5000 if t is None else int(t)

    def fixed_wants(self):
        # Every event of every transaction: said once, so mailpush skips begin-txn.
        return "all"

    def on_transaction(self, txn):
        timestamp = str(int(time.time()))
        body = txn.json.encode()
        headers = [
            ("content-type", "application/json"),
            ("webhook-id", txn.id),
            ("webhook-timestamp", timestamp),
        ]
        if self.key is not None:
            headers.append(("webhook-signature", sign_webhook(self.key, txn.id, timestamp, body)))
        try:
            outcome = http.send("POST", self.url, headers, body, timeout_ms=self.timeout_ms)
        except HttpError as e:
            outcome = e  # refused, timeout, connection, …
        # mailpush's one classification: retry 408, 429 (after Retry-After), 5xx, lost and
        # refused connections and timeouts; give up on other statuses and policy refusals.
        failure = failure_from_http("webhook", outcome)
        if failure:
            raise failure
        log.debug(f"delivered {txn.id} ({len(txn.events)} events)")


Driver = export(Webhook)
# Built for the world push-driver-fixed-begin (build.sh): the answer of fixed_wants.
FixedBegin = export_fixed_begin(Driver)
