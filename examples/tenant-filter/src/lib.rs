//! The `tenant-filter` example: a tenant handler (`DIR/<domain>.wasm`) that forwards
//! only the new messages matching its rules to `url=` as JSON.
//!
//! Args (all optional, combined with AND):
//! - `folders=INBOX,Work` — mailbox names;
//! - `from_domains=example.com,example.org` — sender address domains (case-insensitive);
//! - `flags=\Flagged` — system flags the message must carry at delivery;
//! - `url=` — where matching events are POSTed (each event's canonical JSON); without
//!   it, matches are only logged.

use mailpush_driver_sdk::{
    export_driver, http, log, Args, Driver, EventName, Failure, NewMessage, TxnInfo, Wants,
};

struct TenantFilter {
    folders: Vec<String>,
    from_domains: Vec<String>,
    flags: Vec<String>,
    url: Option<String>,
}

fn list(args: &Args, key: &str) -> Vec<String> {
    args.get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl TenantFilter {
    fn matches(&self, m: &NewMessage) -> bool {
        if !self.folders.is_empty() && !self.folders.contains(&m.message.mailbox) {
            return false;
        }
        if !self.from_domains.is_empty() {
            let domain = m
                .from_address
                .as_deref()
                .and_then(|a| a.rsplit_once('@'))
                .map(|(_, d)| d.to_ascii_lowercase());
            match domain {
                Some(d) if self.from_domains.iter().any(|x| x.eq_ignore_ascii_case(&d)) => {}
                _ => return false,
            }
        }
        let flags = m.flags.clone().unwrap_or_default();
        self.flags.iter().all(|f| flags.iter().any(|x| x == f))
    }

    fn forward(&self, txn: &TxnInfo, m: &NewMessage, json: &str) -> Result<(), Failure> {
        if !self.matches(m) {
            return Ok(());
        }
        let Some(url) = &self.url else {
            log::info(&format!(
                "match for {}: {} uid {}",
                txn.user, m.message.mailbox, m.message.uid
            ));
            return Ok(());
        };
        match http::send(
            "POST",
            url,
            &[
                ("content-type", "application/json"),
                ("webhook-id", &txn.id),
            ],
            json.as_bytes(),
            Some(5000),
        ) {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) if r.status >= 500 => Err(Failure::retryable(format!(
                "endpoint answered {}",
                r.status
            ))),
            Ok(r) => Err(Failure::permanent(format!(
                "endpoint answered {}",
                r.status
            ))),
            Err(e) if e.retryable() => Err(Failure::retryable(e.to_string())),
            Err(e) => Err(Failure::permanent(e.to_string())),
        }
    }
}

impl Driver for TenantFilter {
    fn init(args: &Args) -> Result<Self, String> {
        Ok(TenantFilter {
            folders: list(args, "folders"),
            from_domains: list(args, "from_domains"),
            flags: list(args, "flags"),
            url: args
                .get("url")
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        })
    }

    fn wants(&mut self, _txn: &TxnInfo) -> Wants {
        Wants::Events(vec![EventName::MessageNew, EventName::MessageAppend])
    }

    /// The same answer for every transaction: given once, at load.
    fn fixed_wants(&self) -> Option<Wants> {
        Some(Wants::Events(vec![
            EventName::MessageNew,
            EventName::MessageAppend,
        ]))
    }

    fn on_message_new(&mut self, txn: &TxnInfo, m: &NewMessage, json: &str) -> Result<(), Failure> {
        self.forward(txn, m, json)
    }

    fn on_message_append(
        &mut self,
        txn: &TxnInfo,
        m: &NewMessage,
        json: &str,
    ) -> Result<(), Failure> {
        self.forward(txn, m, json)
    }
}

export_driver!(TenantFilter);
