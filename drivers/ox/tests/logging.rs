//! Log capture in its own test binary: a scoped tracing subscriber only sees every event
//! reliably when no other test thread registers the same callsites at the same time.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mailpush_core::{
    group, Begin, DriverArgs, DriverFactory, DriverInit, NoMetadata, Record, Transaction,
};
use mailpush_ox::OxFactory;

/// The tests of this binary capture logs one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn init(args: &str) -> DriverInit {
    DriverInit {
        number: 1,
        name: "ox".into(),
        args: DriverArgs::parse(args),
        raw: Some(args.into()),
        config_dir: PathBuf::from("/nonexistent"),
        state_dir: PathBuf::from("/nonexistent"),
        metadata: Arc::new(NoMetadata),
        breaker: Default::default(),
        plugin_env: Default::default(),
        background_load: false,
        check_only: false,
    }
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's debug logs (one test at a time): the buffer and the guards.
fn capture() -> (
    Buf,
    std::sync::MutexGuard<'static, ()>,
    tracing::subscriber::DefaultGuard,
) {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    (buf, serial, tracing::subscriber::set_default(subscriber))
}

/// Init, a refused connection and its error: the password appears nowhere.
#[test]
fn the_password_is_never_logged() {
    let (buf, _serial, _guard) = capture();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let failure = rt.block_on(async {
        let url = format!("http://login:s3cret@127.0.0.1:{port}/notify");
        let i = OxFactory
            .init(&init(&format!("url={url} max_retries=2")))
            .await
            .unwrap();
        assert!(i.details.iter().all(|d| !d.contains("s3cret")));
        assert!(i.details[0].contains("login:***@127.0.0.1"));
        let txn = Arc::new(
            Transaction::from_json(
                r#"{"user":"a@b","events":[{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":2}],
                    "metadata":{"/private/vendor/vendor.dovecot/http-notify":"user=1@2"}}"#,
            )
            .unwrap(),
        );
        let Begin::Join { events, txn: mut dtxn } = i.driver.begin_txn(&txn).await.unwrap()
        else {
            panic!("ox should join")
        };
        let mut failure = None;
        for r in group(&txn, events) {
            if let Record::Message(m) = r {
                failure = dtxn.process_msg(&m).await.err();
            }
        }
        assert!(i.driver.counters().contains(&("ox_attempts", 1)));
        failure.expect("a refused connection fails")
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Using URL http://login:***@127.0.0.1"),
        "{logs}"
    );
    assert!(
        logs.contains("Error when sending notification: connect(127.0.0.1:"),
        "{logs}"
    );
    assert!(!logs.contains("s3cret"), "{logs}");
    assert!(!failure.reason.contains("s3cret"));
    // A refused connection is retried later (mailpush's one classification).
    assert!(failure.retryable, "{failure:?}");
    assert!(
        failure.reason.ends_with("failed: Connection refused"),
        "{}",
        failure.reason
    );
}

/// A METADATA value without `user=`: the transaction is skipped with Dovecot's error.
#[test]
fn a_missing_user_is_dovecots_error() {
    let (buf, _serial, _guard) = capture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let begin = rt.block_on(async {
        let i = OxFactory
            .init(&init("url=http://127.0.0.1:9/notify"))
            .await
            .unwrap();
        let txn = Arc::new(
            Transaction::from_json(
                r#"{"user":"a@b","events":[{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":2}],
                    "metadata":{"/private/vendor/vendor.dovecot/http-notify":"foo=bar"}}"#,
            )
            .unwrap(),
        );
        i.driver.begin_txn(&txn).await.unwrap()
    });
    assert!(matches!(begin, Begin::Skip));
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("ERROR") && logs.contains("push-notification-ox: No user provided in config"),
        "{logs}"
    );
}
