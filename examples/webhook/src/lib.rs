//! The `webhook` example driver: POSTs each transaction's canonical JSON to `url=`,
//! signed per Standard Webhooks (https://www.standardwebhooks.com):
//!
//! - `webhook-id`: the transaction id (stable across retries: receivers deduplicate on it)
//! - `webhook-timestamp`: unix seconds
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`
//!
//! Args: `url=` (required), `secret=whsec_<base64>` (optional: unsigned without it),
//! `http_timeout_msecs=` (default 5000: connect and wait for the response; the sandbox's
//! `connect_timeout_msecs`/`first_byte_timeout_msecs` cap it). Not `timeout_msecs`: that
//! key is the sandbox's CPU deadline per call and never reaches the driver. 5xx, 408,
//! 429, timeouts and connection errors are retryable (honouring `Retry-After`); other
//! statuses and requests refused by the sandbox (`allow_hosts`, `allow_private`) are
//! permanent failures.
//!
//! ```text
//! push_notification_driver2 = wasm:file=webhook_driver.wasm url=https://hooks.example.com/mail secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw allow_hosts=hooks.example.com
//! ```

use base64::Engine as _;
use mailpush_driver_sdk::{
    export_driver, hmac_sha256, http, log, Args, Driver, Failure, Transaction, Wants,
};

struct Webhook {
    url: String,
    secret: Option<Vec<u8>>,
    timeout_ms: u64,
}

impl Driver for Webhook {
    fn init(args: &Args) -> Result<Self, String> {
        let url = args.require("url")?.to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("url must be http:// or https://, got {url}"));
        }
        let secret = match args.get("secret") {
            None => None,
            Some(s) => {
                let b64 = s
                    .strip_prefix("whsec_")
                    .ok_or("secret must look like whsec_<base64>")?;
                if b64.is_empty() {
                    return Err("secret: no key after whsec_".into());
                }
                let key = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| "secret: the part after whsec_ is not valid base64".to_string())?;
                // The host's HMAC traps on a longer key: refuse it here, not per delivery.
                if key.len() > mailpush_driver_sdk::MAX_HMAC_KEY_BYTES {
                    return Err(format!(
                        "secret: {} bytes of key, at most {}",
                        key.len(),
                        mailpush_driver_sdk::MAX_HMAC_KEY_BYTES
                    ));
                }
                Some(key)
            }
        };
        let timeout_ms = match args.get("http_timeout_msecs") {
            None => 5000,
            Some(v) => v
                .parse()
                .map_err(|_| format!("http_timeout_msecs={v}: expected milliseconds"))?,
        };
        Ok(Webhook {
            url,
            secret,
            timeout_ms,
        })
    }

    /// Every transaction, every event: mailpush need not ask per transaction.
    fn fixed_wants(&self) -> Option<Wants> {
        Some(Wants::All)
    }

    fn on_transaction(&mut self, txn: &Transaction) -> Result<(), Failure> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let body = txn.json.as_bytes();
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("webhook-id", txn.id.clone()),
            ("webhook-timestamp", timestamp.clone()),
        ];
        if let Some(key) = &self.secret {
            // Signed by the host (mailpush:driver@0.1.1), in native code.
            let mut signed =
                Vec::with_capacity(txn.id.len() + timestamp.len() + body.len() + 2);
            signed.extend_from_slice(txn.id.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(timestamp.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &signed));
            headers.push(("webhook-signature", format!("v1,{sig}")));
        }
        let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let result = http::send("POST", &self.url, &hdrs, body, Some(self.timeout_ms));
        // mailpush's one classification: retry 408, 429 (after Retry-After), 5xx, lost
        // and refused connections and timeouts; give up on other statuses and policy
        // refusals.
        if let Some(f) = http::failure("webhook", &result) {
            return Err(f);
        }
        log::debug(&format!(
            "delivered {} ({} events)",
            txn.id,
            txn.events.len()
        ));
        Ok(())
    }
}

export_driver!(Webhook);
