//! `ox-wasm`: Dovecot 2.3's ox push driver re-implemented as a mailpush component —
//! proof that the WIT contract is enough to reproduce a real driver. It sends the same
//! request as mailpush's native `ox` driver:
//!
//! - active for a user only while METADATA `/private/vendor/vendor.dovecot/http-notify`
//!   is set (tab-separated `key=value`, `user=` required);
//! - only MessageNew in `INBOX`;
//! - `PUT url` with the native driver's headers in its order — `Date`,
//!   `Connection: Keep-Alive`, `Content-Type: application/json; charset=utf-8`,
//!   `Authorization` (Basic, from the URL's `login:password@`), `Accept: */*`, then
//!   `Host` and `Content-Length` (added by mailpush) — and the body
//!   `{"user":…,"event":"messageNew","folder":…,"imap-uidvalidity":N,"imap-uid":N[,"from":…][,"subject":…][,"snippet":…][,"unseen":N]}`;
//! - retries (`max_retries`, default 1) only on timeout, lost connection, 408 and 503
//!   with Retry-After; `http_timeout_msecs` per attempt (default 2000). (The native
//!   driver's `timeout_msecs` cannot be used here: on a wasm driver line that key is
//!   the sandbox's CPU deadline per call and never reaches the component.)
//!
//! The host needs the grant: `allow_hosts=<the url's host>` (plus `allow_private` for
//! an internal address).

use base64::Engine as _;
use mailpush_driver_sdk::{
    export_driver, http, log, metadata, Args, Driver, EventName, Failure, NewMessage, TxnInfo,
    Wants,
};

const METADATA_KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

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
        let user = value
            .split('\t')
            .map(tab_unescape)
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .filter(|(k, _)| k == "user")
            .map(|(_, v)| v)
            .next_back();
        let Some(user) = user else {
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
        let body = request_body(&user, m);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A fresh Date per attempt, as the native driver sends.
            let date = http_date(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
            let mut headers = vec![
                ("Date", date.as_str()),
                ("Connection", "Keep-Alive"),
                ("Content-Type", "application/json; charset=utf-8"),
            ];
            if let Some(a) = &self.auth {
                headers.push(("Authorization", a.as_str()));
            }
            headers.push(("Accept", "*/*"));
            let result = http::send(
                "PUT",
                &self.url,
                &headers,
                body.as_bytes(),
                Some(self.timeout_ms),
            );
            let retry = match &result {
                Ok(r) if (200..300).contains(&r.status) => {
                    log::debug(&format!("Notification sent successfully: {}", r.status));
                    return Ok(());
                }
                Ok(r) => r.status == 408 || (r.status == 503 && r.header("retry-after").is_some()),
                Err(e) => {
                    matches!(e, http::HttpError::Timeout(_))
                        || matches!(e, http::HttpError::Connection(s) if !s.contains("Refused"))
                }
            };
            if !retry || attempt > self.max_retries {
                let msg = match result {
                    Ok(r) => format!("{}", r.status),
                    Err(e) => e.to_string(),
                };
                log::error(&format!("Error when sending notification: {msg}"));
                return Err(if retry {
                    Failure::retryable(msg)
                } else {
                    Failure::permanent(msg)
                });
            }
        }
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate) of unix time `secs`:
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Dovecot's tab-unescape (escape char \x01).
fn tab_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(x) => out.push(x),
            None => {}
        }
    }
    out
}

/// The body Dovecot's ox driver builds, byte for byte.
fn request_body(user: &str, m: &NewMessage) -> String {
    let mut s = String::from("{\"user\":\"");
    escape(user, &mut s);
    s.push_str("\",\"event\":\"messageNew\",\"folder\":\"");
    escape(&m.message.mailbox, &mut s);
    s.push_str(&format!(
        "\",\"imap-uidvalidity\":{},\"imap-uid\":{}",
        m.message.uid_validity, m.message.uid
    ));
    let subject = m.subject.as_deref().or(m.subject_utf8.as_deref());
    for (k, v) in [
        ("from", m.from.as_deref()),
        ("subject", subject),
        ("snippet", m.snippet.as_deref()),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(",\"{k}\":\""));
            escape(v, &mut s);
            s.push('"');
        }
    }
    if let Some(u) = m.unseen {
        s.push_str(&format!(",\"unseen\":{u}"));
    }
    s.push('}');
    s
}

/// Dovecot 2.3's json_append_escaped.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

export_driver!(OxWasm);

#[cfg(test)]
mod tests {
    use super::http_date;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }
}
