//! `mailpush metadata`: per-user server METADATA, shaped like `doveadm mailbox metadata`
//! (`-u USER [-s] [""] KEY [VALUE]`) so existing runbooks work.

use mailpush_core::{MetadataError, MetadataLookup};

use crate::metadata_store::{validate_key, MetadataStore};

/// A METADATA operation, its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataOp {
    Set {
        user: String,
        key: String,
        value: String,
    },
    Get {
        user: String,
        key: String,
    },
    Unset {
        user: String,
        key: String,
    },
    List {
        user: Option<String>,
    },
}

/// A usage error (doveadm exits 64 for these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A mailbox, when given, must be "" (server METADATA).
pub fn server_mailbox(m: &str) -> Result<(), Usage> {
    if m.is_empty() {
        Ok(())
    } else {
        Err(Usage(format!("mailbox `{m}`: mailpush keeps server METADATA only; give the mailbox as \"\" (with -s), as in `doveadm mailbox metadata set -u USER -s \"\" KEY VALUE`")))
    }
}

/// Splits `[MAILBOX] KEY [VALUE]` as doveadm takes them; `with_value` for `set`.
pub fn key_args(args: &[String], with_value: bool) -> Result<(String, Option<String>), Usage> {
    let n = if with_value { 2 } else { 1 };
    let usage = if with_value {
        "usage: mailpush metadata set -u USER [-s] [\"\"] KEY VALUE"
    } else {
        "usage: mailpush metadata get|unset -u USER [-s] [\"\"] KEY"
    };
    if args.is_empty() {
        return Err(Usage(format!(
            "missing KEY{}: {usage}",
            if with_value { " and VALUE" } else { "" }
        )));
    }
    if args.len() > n + 1 {
        return Err(Usage(format!("too many arguments: {usage}")));
    }
    // `set -u U KEY` or `set -u U -s "" KEY` (the value forgotten).
    if with_value && (args.len() == 1 || (args.len() == 2 && args[0].is_empty())) {
        let key = &args[args.len() - 1];
        validate_key(key).map_err(|e| Usage(e.0))?;
        return Err(Usage(format!(
            "missing VALUE after the key {}: {usage}",
            args[args.len() - 1]
        )));
    }
    let (mailbox, rest) = if args.len() > n {
        (Some(&args[0]), &args[1..])
    } else {
        (None, args)
    };
    if let Some(m) = mailbox {
        server_mailbox(m)?;
    }
    let key = rest.first().cloned().unwrap_or_default();
    validate_key(&key).map_err(|e| Usage(e.0))?;
    Ok((key, rest.get(1).cloned()))
}

/// Runs `op` on `store`; returns the lines to print (`get`: the value, or an empty line
/// for a key that is not set, as doveadm; `list`: `USER<TAB>KEY<TAB>VALUE`).
pub fn run(store: &MetadataStore, op: &MetadataOp) -> Result<Vec<String>, MetadataError> {
    Ok(match op {
        MetadataOp::Set { user, key, value } => {
            store.set(user, key, value)?;
            Vec::new()
        }
        MetadataOp::Get { user, key } => vec![store.get(user, key)?.unwrap_or_default()],
        MetadataOp::Unset { user, key } => {
            store.unset(user, key)?;
            Vec::new()
        }
        MetadataOp::List { user } => store
            .list(user.as_deref())?
            .into_iter()
            .map(|(u, k, v)| list_line(&u, &k, &v))
            .collect(),
    })
}

/// One line of `list`: user, key and value separated by TABs, each escaped as Dovecot
/// escapes tab-separated fields (`str_tabescape`), so that a value with a TAB or a
/// newline cannot make a line of its own or a column that is not there.
fn list_line(user: &str, key: &str, value: &str) -> String {
    use mailpush_core::metadata::tab_escape;
    format!(
        "{}\t{}\t{}",
        tab_escape(user),
        tab_escape(key),
        tab_escape(value)
    )
}

/// [`run`] on the cluster's METADATA bucket (cluster mode).
pub async fn run_cluster(
    store: &crate::cluster::metadata::KvMetadata,
    op: &MetadataOp,
) -> Result<Vec<String>, MetadataError> {
    Ok(match op {
        MetadataOp::Set { user, key, value } => {
            store.set(user, key, value).await?;
            Vec::new()
        }
        MetadataOp::Get { user, key } => vec![store.get(user, key).await?.unwrap_or_default()],
        MetadataOp::Unset { user, key } => {
            store.unset(user, key).await?;
            Vec::new()
        }
        MetadataOp::List { user } => store
            .list(user.as_deref())
            .await?
            .into_iter()
            .map(|(u, k, v)| list_line(&u, &k, &v))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn doveadm_shaped_arguments() {
        let key = "/private/vendor/vendor.dovecot/http-notify";
        assert_eq!(
            key_args(&args(&["", key, "user=1"]), true).unwrap(),
            (key.to_string(), Some("user=1".into()))
        );
        assert_eq!(
            key_args(&args(&[key]), false).unwrap(),
            (key.to_string(), None)
        );
        assert!(key_args(&args(&["INBOX", key]), false)
            .unwrap_err()
            .0
            .contains("server METADATA only"));
        assert!(key_args(&args(&["", key]), true)
            .unwrap_err()
            .0
            .contains("missing VALUE"));
        assert!(key_args(&args(&["nokey"]), false).is_err());
        // What clap no longer checks: the count, each with the usage line.
        let usage = |a: &[&str], with_value| key_args(&args(a), with_value).unwrap_err().0;
        assert!(usage(&[], true).starts_with("missing KEY and VALUE: usage: mailpush metadata set"));
        assert!(usage(&[], false).starts_with("missing KEY: usage: mailpush metadata get|unset"));
        assert!(usage(&[key], true).starts_with(&format!("missing VALUE after the key {key}")));
        assert!(
            usage(&["nokey"], true).contains("/private/"),
            "the key's error first"
        );
        assert!(usage(&["", key, "v", "w"], true).starts_with("too many arguments"));
        assert!(usage(&["", key, "v"], false).starts_with("too many arguments"));
    }

    #[test]
    fn operations_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(&dir.path().join("m.db")).unwrap();
        let key = "/private/vendor/vendor.dovecot/http-notify".to_string();
        let user = "u@x".to_string();
        run(
            &store,
            &MetadataOp::Set {
                user: user.clone(),
                key: key.clone(),
                value: "user=1".into(),
            },
        )
        .unwrap();
        assert_eq!(
            run(
                &store,
                &MetadataOp::Get {
                    user: user.clone(),
                    key: key.clone()
                }
            )
            .unwrap(),
            ["user=1"]
        );
        assert_eq!(
            run(&store, &MetadataOp::List { user: None }).unwrap(),
            [format!("u@x\t{key}\tuser=1")]
        );
        run(
            &store,
            &MetadataOp::Unset {
                user: user.clone(),
                key: key.clone(),
            },
        )
        .unwrap();
        assert_eq!(run(&store, &MetadataOp::Get { user, key }).unwrap(), [""]);
    }
}
