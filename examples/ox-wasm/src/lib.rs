//! `ox-wasm`: Dovecot 2.3's ox push driver re-implemented as a mailpush component —
//! proof that the WIT contract is enough to reproduce a real driver. It sends what
//! mailpush's native `ox` driver sends (and Dovecot):
//!
//! - active for a user only while METADATA `/private/vendor/vendor.dovecot/http-notify`
//!   is set (tab-separated `key=value`, `user=` required);
//! - only MessageNew in `INBOX`;
//! - `PUT url` with Dovecot's headers and values — `Date` (one per notification, kept
//!   across its retries), `Authorization` (Basic, from the URL's `login:password@`),
//!   `Connection: Keep-Alive`, `Content-Type: application/json; charset=utf-8` — and
//!   the body
//!   `{"user":…,"event":"messageNew","folder":…,"imap-uidvalidity":N,"imap-uid":N[,"from":…][,"subject":…][,"snippet":…][,"unseen":N]}`.
//!   On the wire the host's HTTP client writes header names in lower case and puts
//!   `host` and `content-length` last; the native driver writes Dovecot's exact bytes;
//! - retries (`max_retries`, default 1) only on timeout, lost connection and 408, as
//!   Dovecot 2.3.19 does; `http_timeout_msecs` per attempt (default 2000). (The native
//!   driver's `timeout_msecs` cannot be used here: on a wasm driver line that key is
//!   the sandbox's CPU deadline per call and never reaches the component.) Whether a
//!   later delivery may help is the SDK's one classification (`http::failure`).
//!
//! The host needs the grant: `allow_hosts=<the url's host>` (plus `allow_private` for
//! an internal address).

use base64::Engine as _;
use mailpush_ox_wire::{metadata_user, request_body, Notification, METADATA_KEY};
use mailpush_driver_sdk::{
    export_driver, http, log, metadata, Args, Driver, EventName, Failure, NewMessage, TxnInfo,
    Wants,
};

struct OxWasm {
    url: String,
    auth: Option<String>,
    max_retries: u32,
    timeout_ms: u64,
    user_from_metadata: bool,
    /// The METADATA `user=` of the current transaction.
    metadata_user: Option<String>,
}

impl Driver for OxWasm {
    fn init(args: &Args) -> Result<Self, String> {
        let raw = args
            .get("url")
            .filter(|u| !u.is_empty())
            .ok_or("Driver requires the url parameter")?;
        let (scheme, rest) = raw
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| {
                "Failed to parse OX REST URL: expected http:// or https://".to_string()
            })?;
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(auth_end);
        let (auth, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((u, p)) if !u.is_empty() => (
                    Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                    )),
                    host,
                ),
                _ => (None, host),
            },
            None => (None, authority),
        };
        Ok(OxWasm {
            url: format!("{scheme}://{host}{path}"),
            auth,
            max_retries: args
                .get("max_retries")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            timeout_ms: args
                .get("http_timeout_msecs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000),
            user_from_metadata: args.has("user_from_metadata"),
            metadata_user: None,
        })
    }

    fn wants(&mut self, _txn: &TxnInfo) -> Wants {
        let Some(value) = metadata(METADATA_KEY) else {
            log::debug(&format!(
                "Skipped because not active ({METADATA_KEY} METADATA not set)"
            ));
            return Wants::Skip;
        };
        let Some(user) = metadata_user(&value) else {
            log::error("No user provided in config");
            return Wants::Skip;
        };
        log::debug(&format!("User ({user})"));
        self.metadata_user = Some(user);
        Wants::Events(vec![EventName::MessageNew])
    }

    fn on_message_new(
        &mut self,
        txn: &TxnInfo,
        m: &NewMessage,
        _json: &str,
    ) -> Result<(), Failure> {
        if m.message.mailbox != "INBOX" {
            log::debug(&format!(
                "Skipped because {} is not a watched mailbox",
                m.message.mailbox
            ));
            return Ok(());
        }
        let user = if self.user_from_metadata {
            self.metadata_user.clone().unwrap_or_default()
        } else {
            txn.user.clone()
        };
        let body = request_body(&Notification {
            user: &user,
            folder: &m.message.mailbox,
            uid_validity: m.message.uid_validity,
            uid: m.message.uid,
            from: m.from.as_deref(),
            subject: m.subject.as_deref().or(m.subject_utf8.as_deref()),
            snippet: m.snippet.as_deref(),
            unseen: m.unseen,
        });
        let mut attempt = 0;
        // One Date per notification, kept across its retries, as Dovecot does.
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        loop {
            attempt += 1;
            let mut headers = vec![("Date", date.as_str())];
            if let Some(a) = &self.auth {
                headers.push(("Authorization", a.as_str()));
            }
            headers.push(("Connection", "Keep-Alive"));
            headers.push(("Content-Type", "application/json; charset=utf-8"));
            let result = http::send(
                "PUT",
                &self.url,
                &headers,
                body.as_bytes(),
                Some(self.timeout_ms),
            );
            // Dovecot's retries within the delivery: a timeout, a lost connection, 408.
            let retry = match &result {
                Ok(r) if (200..300).contains(&r.status) => {
                    log::debug(&format!("Notification sent successfully: {}", r.status));
                    return Ok(());
                }
                Ok(r) => r.status == 408,
                Err(e) => {
                    matches!(e, http::HttpError::Timeout(_))
                        || matches!(e, http::HttpError::Connection(s) if !s.contains("Refused"))
                }
            };
            if !retry || attempt > self.max_retries {
                // Whether a later delivery may help: mailpush's one classification
                // (408, 429, 5xx, lost or refused connections, timeouts).
                let failure = http::failure("the PUT", &result)
                    .unwrap_or_else(|| Failure::permanent("the PUT failed"));
                log::error(&format!("Error when sending notification: {}", failure.reason));
                return Err(failure);
            }
        }
    }
}

export_driver!(OxWasm);
