//! Credentials in a URL's userinfo (`scheme://user:password@host/`): taken out of the
//! URL before it is used or shown, and handed over the protocol's own way (HTTP Basic
//! authentication for Lua's `dovecot.http`, NATS's CONNECT for the cluster's servers).

/// The URI without its userinfo, with the user and password (percent-decoded), if it
/// has one.
pub fn without_userinfo(uri: &http::Uri) -> Option<(http::Uri, String, String)> {
    let authority = uri.authority()?.as_str();
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = (b[i] == b'%')
                .then(|| s.get(i + 1..i + 3))
                .flatten()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(host.parse().ok()?);
    let bare = http::Uri::from_parts(parts).ok()?;
    Some((bare, decode(user), decode(password)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_taken_out_and_decoded() {
        let uri: http::Uri = "nats://mp:s%40cret@127.0.0.1:4222".parse().unwrap();
        let (bare, user, password) = without_userinfo(&uri).unwrap();
        assert_eq!(bare.to_string(), "nats://127.0.0.1:4222/");
        assert_eq!((user.as_str(), password.as_str()), ("mp", "s@cret"));
        let token: http::Uri = "nats://T0KEN@h:4222".parse().unwrap();
        let (_, user, password) = without_userinfo(&token).unwrap();
        assert_eq!((user.as_str(), password.as_str()), ("T0KEN", ""));
        let none: http::Uri = "nats://h:4222".parse().unwrap();
        assert!(without_userinfo(&none).is_none());
    }
}
