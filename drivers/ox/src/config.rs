//! The ox driver's arguments, parsed exactly as Dovecot 2.3 parses them.

use std::time::Duration;

use mailpush_core::args::redact_url;
use mailpush_core::DriverArgs;

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OxConfig {
    /// The URL without userinfo.
    pub url: String,
    /// For logs and `check`: the URL as configured, password masked.
    pub url_display: String,
    /// `login:password` from the URL's userinfo (Basic auth), only when both exist.
    pub basic_auth: Option<(String, String)>,
    pub cache_lifetime: Duration,
    /// Total attempts = max_retries + 1.
    pub max_retries: u32,
    /// Per attempt.
    pub timeout: Duration,
    pub user_from_metadata: bool,
    /// Extra PEM CA file for https.
    pub ssl_ca_file: Option<String>,
}

/// Parses a Dovecot time interval: `60s`, `2mins`, `1h`, `0`; a bare non-zero number is
/// an error (Dovecot: "missing units").
pub fn parse_interval(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("Invalid time interval: {v}"))?;
    let unit = unit.trim();
    if unit.is_empty() {
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        return Err(format!(
            "Time interval '{v}' is missing units (add e.g. 's' for seconds)"
        ));
    }
    let secs = |m: u64| Ok(Duration::from_secs(n * m));
    match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => secs(1),
        "m" | "min" | "mins" | "minute" | "minutes" => secs(60),
        "h" | "hour" | "hours" => secs(3600),
        "d" | "day" | "days" => secs(86400),
        "w" | "week" | "weeks" => secs(7 * 86400),
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" if n % 1000 == 0 => {
            Ok(Duration::from_millis(n))
        }
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => Err(format!(
            "Time interval '{v}' uses milliseconds, which this setting does not support"
        )),
        _ => Err(format!("Unknown time interval unit: {unit}")),
    }
}

impl OxConfig {
    /// Parses the args; returns the config and warnings (Dovecot's silent fallbacks).
    pub fn parse(args: &DriverArgs) -> Result<(OxConfig, Vec<String>), String> {
        let mut warnings = Vec::new();
        let raw = args
            .get("url")
            .filter(|u| !u.is_empty())
            .ok_or("Driver requires the url parameter")?;
        let display = redact_url(raw);
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| format!("Failed to parse OX REST URL {display}: missing scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "Failed to parse OX REST URL {display}: only http and https are supported"
            ));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(format!(
                "Failed to parse OX REST URL {display}: missing host"
            ));
        }
        let basic_auth = userinfo
            .and_then(|u| u.split_once(':'))
            .filter(|(u, _)| !u.is_empty())
            .map(|(u, p)| (u.to_string(), p.to_string()));
        let url = format!(
            "{scheme}://{host}{}",
            if tail.is_empty() { "/" } else { tail }
        );
        reqwest::Url::parse(&url)
            .map_err(|e| format!("Failed to parse OX REST URL {display}: {e}"))?;
        let cache_lifetime = match args.get("cache_lifetime") {
            None => Duration::from_secs(60),
            Some(v) => parse_interval(v).map_err(|e| {
                let hint = if e.contains("missing units") {
                    format!(" (write e.g. cache_lifetime={v}s)")
                } else {
                    String::new()
                };
                format!("Failed to parse OX cache_lifetime {v}: {e}{hint}")
            })?,
        };
        let mut number = |key: &str, default: u32| {
            match args.get(key) {
            None => default,
            Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
                warnings.push(format!("{key}={v} is not a number; using the default {default} (as Dovecot does, silently)"));
                default
            }),
        }
        };
        let max_retries = number("max_retries", 1);
        let timeout = Duration::from_millis(number("timeout_msecs", 2000) as u64);
        Ok((
            OxConfig {
                url,
                url_display: display,
                basic_auth,
                cache_lifetime,
                max_retries,
                timeout,
                user_from_metadata: args.has("user_from_metadata"),
                ssl_ca_file: args
                    .get("ssl_ca_file")
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_like_dovecot() {
        assert_eq!(parse_interval("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("2mins"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("2000ms"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("60").unwrap_err().contains("missing units"));
        assert!(parse_interval("5x").is_err());
    }

    #[test]
    fn url_userinfo_and_fallbacks() {
        let (c, w) = OxConfig::parse(&DriverArgs::parse("url=http://login:pass@node1.domain.tld:8009/preliminary/http-notify/v1/notify user_from_metadata timeout_msecs=10000 max_retries=x")).unwrap();
        assert_eq!(
            c.url,
            "http://node1.domain.tld:8009/preliminary/http-notify/v1/notify"
        );
        assert_eq!(c.basic_auth, Some(("login".into(), "pass".into())));
        assert_eq!(
            c.url_display,
            "http://login:***@node1.domain.tld:8009/preliminary/http-notify/v1/notify"
        );
        assert!(c.user_from_metadata);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.max_retries, 1);
        assert_eq!(w.len(), 1);
        let (c, _) = OxConfig::parse(&DriverArgs::parse("url=http://user@h/")).unwrap();
        assert_eq!(c.basic_auth, None, "user@ without :password sends no auth");
        assert_eq!(
            OxConfig::parse(&DriverArgs::parse("")).unwrap_err(),
            "Driver requires the url parameter"
        );
        let e = OxConfig::parse(&DriverArgs::parse("url=http://h/ cache_lifetime=60")).unwrap_err();
        assert!(
            e.starts_with(
                "Failed to parse OX cache_lifetime 60: Time interval '60' is missing units"
            ) && e.contains("cache_lifetime=60s"),
            "{e}"
        );
        let e = OxConfig::parse(&DriverArgs::parse("url=ftp://u:secret@h/")).unwrap_err();
        assert!(
            e.contains("Failed to parse OX REST URL") && !e.contains("secret"),
            "{e}"
        );
    }
}
