//! A driver built against `mailpush:driver@0.1.0` as it was released (`wit/driver.wit`
//! here is that contract, frozen: never edit it). Every 0.1.x host must keep running it
//! unchanged. It uses every part of the 0.1.0 contract: `init` arguments, `begin-txn`
//! (skips the user `skip@example.com`, wants every event otherwise), `deliver` with the
//! typed events and their JSON, `host.log` and `host.metadata-get`, and reports what it
//! saw as a failure's reason so a test can read it.

wit_bindgen::generate!({
    // The real deps (wasi:http & co.) and the frozen 0.1.0 contract.
    path: [
        "../../../wit/deps/io.wit",
        "../../../wit/deps/clocks.wit",
        "../../../wit/deps/random.wit",
        "../../../wit/deps/filesystem.wit",
        "../../../wit/deps/sockets.wit",
        "../../../wit/deps/cli.wit",
        "../../../wit/deps/http.wit",
        "wit",
    ],
    world: "mailpush:driver/push-driver@0.1.0",
    generate_all,
});

use std::cell::RefCell;

use exports::mailpush::driver::driver::{Begin, Failure, Guest, Transaction};
use mailpush::driver::host::{log, metadata_get, Level};
use mailpush::driver::types::{Event, EventName};

thread_local! {
    static TAG: RefCell<String> = const { RefCell::new(String::new()) };
}

struct Contract010;

impl Guest for Contract010 {
    fn init(args: Vec<(String, String)>) -> Result<(), String> {
        let tag = args
            .iter()
            .find(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .ok_or("missing required argument tag=…")?;
        TAG.with(|t| *t.borrow_mut() = tag);
        Ok(())
    }

    fn begin_txn(_id: String, user: String) -> Begin {
        if user == "skip@example.com" {
            return Begin::Skip;
        }
        Begin::Events(vec![
            EventName::FlagsClear,
            EventName::FlagsSet,
            EventName::MailboxCreate,
            EventName::MailboxDelete,
            EventName::MailboxRename,
            EventName::MailboxSubscribe,
            EventName::MailboxUnsubscribe,
            EventName::MessageAppend,
            EventName::MessageExpunge,
            EventName::MessageNew,
            EventName::MessageRead,
            EventName::MessageTrash,
        ])
    }

    fn deliver(txn: Transaction) -> Result<(), Failure> {
        log(Level::Info, &format!("0.1.0 driver delivering {}", txn.id));
        let kinds: Vec<String> = txn
            .events
            .iter()
            .map(|r| match &r.event {
                Event::MessageNew(m) => format!("new:{}:{}", m.message.mailbox, m.message.uid),
                Event::MailboxCreate(m) => format!("create:{m}"),
                _ => "other".to_string(),
            })
            .collect();
        let jsons: Vec<&str> = txn.events.iter().map(|r| r.json.as_str()).collect();
        let metadata = metadata_get("/private/vendor/vendor.dovecot/http-notify");
        Err(Failure {
            reason: format!(
                "tag={} id={} user={} events=[{}] json={} metadata={:?} txn_json_len={}",
                TAG.with(|t| t.borrow().clone()),
                txn.id,
                txn.user,
                kinds.join(","),
                jsons.join(""),
                metadata,
                txn.json.len()
            ),
            retryable: false,
            retry_after_ms: None,
        })
    }
}

export!(Contract010);
