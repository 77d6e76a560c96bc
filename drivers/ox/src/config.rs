//! The ox driver's arguments, parsed as Dovecot 2.3 parses them
//! (`dovecot-push.md` §7.1): `url` and `cache_lifetime` fail init when invalid;
//! `max_retries` and `timeout_msecs` fall back to their defaults (silently in Dovecot;
//! here with a warning for `mailpush check`).

use std::path::PathBuf;
use std::time::Duration;

use mailpush_core::args::{redact_text, redact_url};
use mailpush_core::{DriverArgs, InitError};

/// Dovecot's defaults.
pub const DEFAULT_CACHE_LIFETIME: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_RETRIES: u32 = 1;
pub const DEFAULT_TIMEOUT_MSECS: u32 = 2000;

/// The arguments the driver reads; any other key is ignored (as in Dovecot) with a warning.
pub const KNOWN_KEYS: [&str; 6] = [
    "url",
    "cache_lifetime",
    "max_retries",
    "timeout_msecs",
    "user_from_metadata",
    "ssl_ca_file",
];

/// The URL's login and password, as bytes: percent-decoding may give any byte but NUL
/// (Dovecot's `uri_data_decode`), and Basic auth sends them as they are. Its `Debug`
/// never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl BasicAuth {
    /// `user:password`, what the `Authorization: Basic` header encodes.
    pub fn credentials(&self) -> Vec<u8> {
        [self.user.as_slice(), b":", self.password.as_slice()].concat()
    }
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OxConfig {
    /// The URL without userinfo: what requests are sent to.
    pub url: String,
    /// For logs and `check`: the URL as configured, password masked.
    pub url_display: String,
    /// `host:port` of the URL, for Dovecot's `connect(host:port) failed` wording.
    pub authority: String,
    /// `https`.
    pub https: bool,
    /// The host to connect to (and the TLS server name): as written, IPv6 without its
    /// brackets.
    pub host: String,
    /// The port to connect to (80 or 443 unless the URL has one).
    pub port: u16,
    /// The `Host` header, as Dovecot 2.3 sends it: the host as written (case kept), with
    /// `:port` only when the URL has a port, even the default one (`127.0.0.1:80`).
    pub host_header: String,
    /// The request target: the URL's path and query as written (`/` when there is no
    /// path; an empty query `?` is kept).
    pub target: String,
    /// `login:password` from the URL's userinfo (percent-decoded), used for HTTP Basic
    /// auth; only when the user is non-empty **and** a password is present.
    pub basic_auth: Option<BasicAuth>,
    /// Dovecot's METADATA cache time, accepted and checked as Dovecot does; mailpush
    /// reads METADATA for every transaction (see [`crate::activation`]).
    pub cache_lifetime: Duration,
    /// Total attempts = max_retries + 1.
    pub max_retries: u32,
    /// Per attempt (Dovecot's `request_timeout_msecs`); `timeout_msecs=0` is Dovecot's
    /// HTTP client default, 60 s. (`None` only for a client built without a timeout.)
    pub timeout: Option<Duration>,
    /// `user` in the body is the METADATA `user=` value instead of the login name.
    pub user_from_metadata: bool,
    /// Extra PEM CA file for https (as configured; the driver resolves relative paths
    /// against the config file's folder).
    pub ssl_ca_file: Option<PathBuf>,
}

/// What Dovecot 2.3's HTTP client uses for a request timeout of 0
/// (`HTTP_CLIENT_DEFAULT_REQUEST_TIMEOUT_MSECS`).
pub const DOVECOT_HTTP_DEFAULT_TIMEOUT_MSECS: u64 = 60_000;

impl OxConfig {
    /// The per-attempt timeout in milliseconds (0 = none).
    pub fn timeout_msecs(&self) -> u128 {
        self.timeout.map_or(0, |t| t.as_millis())
    }
}

/// Dovecot 2.3's `settings_get_time()` (seconds): `60s`, `2mins`, `1h`, `3 weeks`, `5000ms`;
/// units are case-insensitive prefixes of `secs`/`seconds`, `mins`/`minutes`, `hours`,
/// `days`, `weeks`, `msecs`/`mseconds`/`millisecs`/`milliseconds` (milliseconds only when
/// divisible by 1000); `0` needs no unit; a bare non-zero number is an error. The error
/// texts are Dovecot's.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let num: u64 = match s[..digits].parse() {
        Ok(n) => n,
        Err(_) => return Err(format!("Invalid time interval: {s}")),
    };
    let unit = s[digits..].trim_start_matches(' ');
    if unit.is_empty() && num != 0 {
        return Err(format!(
            "Time interval '{s}' is missing units (add e.g. 's' for seconds)"
        ));
    }
    // A non-empty `unit` is accepted when it is a case-insensitive prefix of `word`.
    let prefix_of =
        |word: &str| unit.len() <= word.len() && word[..unit.len()].eq_ignore_ascii_case(unit);
    let (num, multiply) = match unit.as_bytes().first().map(u8::to_ascii_uppercase) {
        None => (num, 1),
        Some(b'S') if prefix_of("secs") || prefix_of("seconds") => (num, 1),
        Some(b'M') if prefix_of("mins") || prefix_of("minutes") => (num, 60),
        Some(b'M')
            if prefix_of("msecs")
                || prefix_of("mseconds")
                || prefix_of("millisecs")
                || prefix_of("milliseconds") =>
        {
            if !num.is_multiple_of(1000) {
                return Err(format!("Milliseconds not supported for this setting: {s}"));
            }
            (num / 1000, 1)
        }
        Some(b'H') if prefix_of("hours") => (num, 3600),
        Some(b'D') if prefix_of("days") => (num, 86_400),
        Some(b'W') if prefix_of("weeks") => (num, 7 * 86_400),
        _ => return Err(format!("Invalid time interval: {s}")),
    };
    if num > u64::from(u32::MAX) / multiply {
        return Err(format!("Time interval is too large: {s}"));
    }
    Ok(Duration::from_secs(num * multiply))
}

/// Dovecot's `str_to_uint`: decimal digits only (no sign, no spaces), within u32.
fn str_to_uint(v: &str) -> Option<u32> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Decodes `%XX` escapes (userinfo of the URL) into bytes, any but NUL (Dovecot's
/// `uri_data_decode`: "Encoded NUL character").
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte == 0 {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The URL for logs: the userinfo password masked, also when the scheme is missing or
/// malformed (`http//user:pass@host`) and when the URL does not parse at all.
pub fn mask_password(raw: &str) -> String {
    let masked = if raw.contains("://") {
        redact_url(raw)
    } else {
        redact_url(&format!("x://{raw}"))["x://".len()..].to_string()
    };
    redact_text(&masked)
}

/// The parts of the `url` argument.
struct ParsedUrl {
    url: String,
    authority: String,
    https: bool,
    host: String,
    port: u16,
    host_header: String,
    target: String,
    basic_auth: Option<BasicAuth>,
}

/// A reg-name or IPv4 host: unreserved, sub-delims and `%` (RFC 3986), ASCII only.
fn valid_reg_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

/// The path and query: visible ASCII without `#` (what a request line can carry).
fn valid_target(target: &str) -> bool {
    target.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

/// Parses the URL like Dovecot's `http_url_parse(…, HTTP_URL_ALLOW_USERINFO_PART)`:
/// http or https, a host, optional userinfo, no fragment. Host, port, path and query are
/// kept as written: Dovecot sends them so (`drivers/ox/tests/dovecot-requests/`).
fn parse_url(raw: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or("Relative HTTP URL not allowed")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("Not an HTTP URL (scheme `{scheme}`)"));
    }
    let https = scheme == "https";
    if rest.contains('#') {
        return Err("URL fragment not allowed for HTTP URL in this context".into());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if hostport.is_empty() {
        return Err("HTTP URL does not allow empty host".into());
    }
    let basic_auth = match userinfo.and_then(|u| u.split_once(':')) {
        Some((user, pass)) => {
            let user = percent_decode(user).ok_or("Invalid %-encoding in userinfo")?;
            let pass = percent_decode(pass).ok_or("Invalid %-encoding in userinfo")?;
            (!user.is_empty()).then_some(BasicAuth {
                user,
                password: pass,
            })
        }
        None => None,
    };
    // `name` as written (IPv6 in brackets), `host` to connect to, the port if written.
    let (name, host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("Invalid IPv6 address in URL")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("Invalid IPv6 address in URL".into());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("Invalid port in URL")?),
        };
        (&hostport[..addr.len() + 2], addr, port)
    } else {
        let (name, port) = match hostport.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (hostport, None),
        };
        if !valid_reg_name(name) {
            return Err("Invalid host name in URL".into());
        }
        (name, name, port)
    };
    // An empty port (`host:/`) is no port.
    let port = match port.filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => Some(
            str_to_uint(p)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or("Invalid port number in URL")?,
        ),
    };
    let default_port = if https { 443 } else { 80 };
    let host_header = match port {
        Some(p) => format!("{name}:{p}"),
        None => name.to_string(),
    };
    let target = match tail.as_bytes().first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{tail}"),
        Some(_) => tail.to_string(),
    };
    if !valid_target(&target) {
        return Err("Invalid character in URL path or query".into());
    }
    Ok(ParsedUrl {
        url: format!("{scheme}://{host_header}{target}"),
        authority: format!("{name}:{}", port.unwrap_or(default_port)),
        https,
        host: host.to_string(),
        port: port.unwrap_or(default_port),
        host_header,
        target,
        basic_auth,
    })
}

impl OxConfig {
    /// Parses the args; returns the config and the warnings `mailpush check` shows
    /// (Dovecot's silent fallbacks, ignored keys). Errors are Dovecot's texts; the URL's
    /// password never appears in them.
    pub fn parse(args: &DriverArgs) -> Result<(OxConfig, Vec<String>), InitError> {
        let mut warnings = Vec::new();
        let raw = args
            .get("url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| InitError::of_arg("url", "Driver requires the url parameter"))?;
        let url_display = mask_password(raw);
        let parsed = parse_url(raw).map_err(|e| {
            InitError::of_arg(
                "url",
                format!("Failed to parse OX REST URL {url_display}: {e}"),
            )
        })?;

        let cache_lifetime = match args.get("cache_lifetime") {
            None => DEFAULT_CACHE_LIFETIME,
            Some(v) => parse_interval(v).map_err(|e| {
                let hint = if e.contains("missing units") {
                    format!("; use e.g. cache_lifetime={v}s")
                } else {
                    String::new()
                };
                InitError::of_arg(
                    "cache_lifetime",
                    format!("Failed to parse OX cache_lifetime {v}: {e}{hint}"),
                )
            })?,
        };

        let mut number = |key: &str, default: u32| match args.get(key) {
            None => default,
            Some(v) => str_to_uint(v).unwrap_or_else(|| {
                let what = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("is out of range (at most {})", u32::MAX)
                } else {
                    "is not an unsigned number".to_string()
                };
                warnings.push(format!(
                    "{key}={v} {what}; using the default {key}={default} \
                     (Dovecot falls back silently)"
                ));
                default
            }),
        };
        let max_retries = number("max_retries", DEFAULT_MAX_RETRIES);
        let timeout_msecs = number("timeout_msecs", DEFAULT_TIMEOUT_MSECS);
        // Dovecot 2.3's HTTP client takes a request timeout of 0 as its default,
        // HTTP_CLIENT_DEFAULT_REQUEST_TIMEOUT_MSECS (1 minute).
        let timeout = Some(Duration::from_millis(if timeout_msecs == 0 {
            warnings.push(format!(
                "timeout_msecs=0: Dovecot's HTTP client then uses its default request timeout \
                 of {DOVECOT_HTTP_DEFAULT_TIMEOUT_MSECS} ms; so does mailpush"
            ));
            DOVECOT_HTTP_DEFAULT_TIMEOUT_MSECS
        } else {
            timeout_msecs.into()
        }));
        for (key, _) in args.iter() {
            if !KNOWN_KEYS.contains(&key) {
                let hint = mailpush_core::suggest::nearest(key, &KNOWN_KEYS)
                    .map(|k| format!(": did you mean {k}?"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "unknown argument `{key}` is ignored{hint} (known: {})",
                    KNOWN_KEYS.join(", ")
                ));
            }
        }

        Ok((
            OxConfig {
                url: parsed.url,
                url_display,
                authority: parsed.authority,
                https: parsed.https,
                host: parsed.host,
                port: parsed.port,
                host_header: parsed.host_header,
                target: parsed.target,
                basic_auth: parsed.basic_auth,
                cache_lifetime,
                max_retries,
                timeout,
                user_from_metadata: args.has("user_from_metadata"),
                ssl_ca_file: args
                    .get("ssl_ca_file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Result<Duration, String> {
        Ok(Duration::from_secs(n))
    }

    fn auth(user: &str, password: &str) -> BasicAuth {
        BasicAuth {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn intervals_like_dovecot() {
        // From Dovecot's test-settings-parser.c (with the spaces our args cannot hold).
        for (input, expected) in [
            ("0", 0),
            ("59s", 59),
            ("59 s", 59),
            ("59se", 59),
            ("59secs", 59),
            ("59seconds", 59),
            ("123m", 123 * 60),
            ("123mi", 123 * 60),
            ("123minutes", 123 * 60),
            ("2mins", 120),
            ("1h", 3600),
            ("123hou", 123 * 3600),
            ("12d", 12 * 86_400),
            ("12days", 12 * 86_400),
            ("3w", 3 * 7 * 86_400),
            ("3weeks", 3 * 7 * 86_400),
            ("1000ms", 1),
            ("50000ms", 50),
            ("2000msecs", 2),
            ("5000mil", 5),
            ("5000milliseconds", 5),
            ("60S", 60),
            ("0ms", 0),
        ] {
            assert_eq!(parse_interval(input), secs(expected), "{input}");
        }
        for bad in [
            "-1",
            "1ss",
            "1secss",
            "1ma",
            "1minsa",
            "1hu",
            "1hoursa",
            "1dd",
            "1days?",
            "1wa",
            "1weeksb",
            "1ms",
            "999ms",
            "1001ms",
            "7102 w",
            "4294967296 s",
            "",
            "s",
            " 5s",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_interval("60"),
            Err("Time interval '60' is missing units (add e.g. 's' for seconds)".into())
        );
        assert_eq!(
            parse_interval("1001ms"),
            Err("Milliseconds not supported for this setting: 1001ms".into())
        );
        assert_eq!(
            parse_interval("5x"),
            Err("Invalid time interval: 5x".into())
        );
        assert_eq!(
            parse_interval("7102w"),
            Err("Time interval is too large: 7102w".into())
        );
    }

    #[test]
    fn url_userinfo_and_fallbacks() {
        let (c, w) = OxConfig::parse(&DriverArgs::parse(
            "url=http://login:pass@node1.domain.tld:8009/preliminary/http-notify/v1/notify user_from_metadata timeout_msecs=10000 max_retries=x",
        ))
        .unwrap();
        assert_eq!(
            c.url,
            "http://node1.domain.tld:8009/preliminary/http-notify/v1/notify"
        );
        assert_eq!(c.authority, "node1.domain.tld:8009");
        assert_eq!(c.basic_auth, Some(auth("login", "pass")));
        assert_eq!(
            c.url_display,
            "http://login:***@node1.domain.tld:8009/preliminary/http-notify/v1/notify"
        );
        assert!(c.user_from_metadata);
        assert_eq!(c.timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.max_retries, 1);
        assert_eq!(c.cache_lifetime, Duration::from_secs(60));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("max_retries=x is not"), "{w:?}");

        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=https://h")).unwrap();
        assert_eq!(
            (c.url.as_str(), c.authority.as_str()),
            ("https://h/", "h:443")
        );

        // user@ without :password sends no auth; an empty password is still a password.
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://user@h/")).unwrap();
        assert_eq!(c.basic_auth, None);
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://user:@h/")).unwrap();
        assert_eq!(c.basic_auth, Some(auth("user", "")));
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://:pw@h/")).unwrap();
        assert_eq!(c.basic_auth, None);
        // Userinfo is percent-decoded.
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://a%40b:p%3As%25@h/")).unwrap();
        assert_eq!(c.basic_auth, Some(auth("a@b", "p:s%")));
        // Any byte but NUL, as Dovecot decodes it (Basic auth sends the bytes).
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://u:p%E9ss@h/")).unwrap();
        assert_eq!(c.basic_auth.unwrap().credentials(), b"u:p\xe9ss");
        let e = OxConfig::parse(&DriverArgs::parse("url=http://u:p%00@h/")).unwrap_err();
        assert!(
            e.to_string().contains("Invalid %-encoding in userinfo"),
            "{e}"
        );
        // Debug never shows the password.
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://u:s3cret@h/")).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");

        // user_from_metadata is presence-only.
        let (c, _) =
            OxConfig::parse(&DriverArgs::parse("url=http://h/ user_from_metadata=no")).unwrap();
        assert!(c.user_from_metadata);
    }

    /// Host header and request target as Dovecot 2.3.19 sent them for these URLs
    /// (captured from its ox driver: `drivers/ox/tests/dovecot-requests/README.md`).
    #[test]
    fn host_and_target_as_dovecot_sends_them() {
        for (url, host_header, target, connect) in [
            (
                "http://login:pass@127.0.0.1:33389/preliminary/http-notify/v1/notify",
                "127.0.0.1:33389",
                "/preliminary/http-notify/v1/notify",
                ("127.0.0.1", 33389),
            ),
            // No port: none in Host; an explicit default port is kept.
            ("http://127.0.0.1/n", "127.0.0.1", "/n", ("127.0.0.1", 80)),
            (
                "http://127.0.0.1:80/p80",
                "127.0.0.1:80",
                "/p80",
                ("127.0.0.1", 80),
            ),
            (
                "https://127.0.0.1/n?x=1",
                "127.0.0.1",
                "/n?x=1",
                ("127.0.0.1", 443),
            ),
            // The host's case is kept; no path is `/`.
            (
                "http://LocalHost:33389",
                "LocalHost:33389",
                "/",
                ("LocalHost", 33389),
            ),
            // Path and query as written: escapes not decoded, an empty query kept.
            (
                "http://a%40b:p%3As@127.0.0.1:33389/x%20y?q=%41&r",
                "127.0.0.1:33389",
                "/x%20y?q=%41&r",
                ("127.0.0.1", 33389),
            ),
            (
                "HTTP://127.0.0.1:33389/upper?",
                "127.0.0.1:33389",
                "/upper?",
                ("127.0.0.1", 33389),
            ),
            ("http://h?a=b", "h", "/?a=b", ("h", 80)),
            ("http://[::1]:8009/n", "[::1]:8009", "/n", ("::1", 8009)),
            ("https://[::1]/n", "[::1]", "/n", ("::1", 443)),
        ] {
            let (c, _) = OxConfig::parse(&DriverArgs::parse(&format!("url={url}"))).unwrap();
            assert_eq!(
                (c.host_header.as_str(), c.target.as_str()),
                (host_header, target),
                "{url}"
            );
            assert_eq!((c.host.as_str(), c.port), connect, "{url}");
            assert_eq!(
                c.https,
                url.to_ascii_lowercase().starts_with("https"),
                "{url}"
            );
        }
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://[::1]:8009/n")).unwrap();
        assert_eq!(c.authority, "[::1]:8009");
        for bad in [
            "url=http://[::1/",
            "url=http://[zz]/",
            "url=http://h:8x/",
            "url=http://h/a\u{7f}",
            "url=http://h/\u{1}",
            "url=http://hä/",
            "url=http://h/ä",
        ] {
            assert!(OxConfig::parse(&DriverArgs::parse(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_fall_back_with_warnings() {
        let (c, w) = OxConfig::parse(&DriverArgs::parse(
            "url=http://h/ max_retries=+3 timeout_msecs=-1 foo=bar",
        ))
        .unwrap();
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(c.timeout, Some(Duration::from_millis(2000)));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[2].contains("unknown argument `foo` is ignored (known:"),
            "{w:?}"
        );
        // A typo of a known argument says which.
        let (_, w) = OxConfig::parse(&DriverArgs::parse(
            "url=http://h/ user_from_metdata cache_lifetme=1s",
        ))
        .unwrap();
        assert!(
            w[0].contains("`user_from_metdata` is ignored: did you mean user_from_metadata?"),
            "{w:?}"
        );
        assert!(
            w[1].contains("`cache_lifetme` is ignored: did you mean cache_lifetime?"),
            "{w:?}"
        );
        let (c, w) = OxConfig::parse(&DriverArgs::parse(
            "url=http://h/ max_retries=0 timeout_msecs=0 cache_lifetime=0",
        ))
        .unwrap();
        // timeout_msecs=0 is Dovecot's HTTP client default of one minute, not "never".
        assert_eq!(
            (c.max_retries, c.timeout, c.cache_lifetime),
            (0, Some(Duration::from_secs(60)), Duration::ZERO)
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("60000 ms"), "{w:?}");
        // Digits, but too many: said as such.
        let (c, w) =
            OxConfig::parse(&DriverArgs::parse("url=http://h/ max_retries=4294967296")).unwrap();
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        assert!(
            w[0].starts_with("max_retries=4294967296 is out of range (at most 4294967295)"),
            "{w:?}"
        );
    }

    #[test]
    fn init_errors_are_dovecots_and_never_show_the_password() {
        let err = |a: &str| OxConfig::parse(&DriverArgs::parse(a)).unwrap_err().message;
        assert_eq!(err(""), "Driver requires the url parameter");
        assert_eq!(err("url="), "Driver requires the url parameter");
        assert_eq!(
            err("url=http://h/ cache_lifetime=60"),
            "Failed to parse OX cache_lifetime 60: Time interval '60' is missing units \
             (add e.g. 's' for seconds); use e.g. cache_lifetime=60s"
        );
        assert_eq!(
            err("url=http://h/ cache_lifetime=1x"),
            "Failed to parse OX cache_lifetime 1x: Invalid time interval: 1x"
        );
        for bad in [
            "url=ftp://u:secret@h/",
            "url=u:secret@h/",
            "url=http://u:secret@/x",
            "url=http://u:secret@h/#frag",
            "url=http://u:secret%zz@h/",
            "url=http://u:secret@h:99999/",
        ] {
            let e = err(bad);
            assert!(
                e.starts_with("Failed to parse OX REST URL ") && !e.contains("secret"),
                "{bad}: {e}"
            );
        }
    }
}
