//! The ingest token: `Authorization: Bearer TOKEN`, or HTTP Basic with the token as the
//! password (what Dovecot's ox driver sends from `ox:url=http://user:TOKEN@…`), compared
//! in constant time. Errors never include the token.

use std::path::Path;

use anyhow::Context;
use axum::http::{header, HeaderMap};
use base64::Engine;
use subtle::ConstantTimeEq;

/// Reads the bearer token file (trimmed).
pub fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading ingest_token_file {}", path.display()))?;
    let t = t.trim();
    anyhow::ensure!(
        !t.is_empty(),
        "ingest_token_file {} is empty",
        path.display()
    );
    Ok(t.as_bytes().to_vec())
}

/// Whether the request presents `token` (always, when no token is configured).
pub fn authorised(token: Option<&[u8]>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let presented: Vec<u8> = if scheme.eq_ignore_ascii_case("Bearer") {
        credentials.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("Basic") {
        let b = credentials;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        match decoded.iter().position(|&c| c == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    presented.len() == token.len() && bool::from(presented.ct_eq(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_with_the_token_as_password() {
        let token = Some(&b"s3cret"[..]);
        assert!(authorised(None, &HeaderMap::new()));
        assert!(!authorised(token, &HeaderMap::new()));
        assert!(authorised(token, &with("Bearer s3cret")));
        assert!(!authorised(token, &with("Bearer s3cre")));
        // The scheme in any case.
        assert!(authorised(token, &with("bearer s3cret")));
        assert!(authorised(token, &with("BASIC bG9naW46czNjcmV0")));
        // "login:s3cret", "anything:s3cret"
        assert!(authorised(token, &with("Basic bG9naW46czNjcmV0")));
        assert!(authorised(token, &with("Basic YW55dGhpbmc6czNjcmV0")));
        // "login:pass"
        assert!(!authorised(token, &with("Basic bG9naW46cGFzcw==")));
        assert!(!authorised(token, &with("Basic !!")));
    }
}
