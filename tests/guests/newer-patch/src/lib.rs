//! A driver built against a later patch of the contract (0.1.2, `wit/driver.wit`: the real
//! one with the version changed and a host function added) that calls what this host does
//! not provide: mailpush must refuse it at load, naming both versions.

wit_bindgen::generate!({
    // The real deps (wasi:http & co.) and the contract with a later patch version.
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
    world: "mailpush:driver/push-driver@0.1.2",
    generate_all,
});

use exports::mailpush::driver::driver::{Begin, Failure, Guest, Transaction};

struct NewerPatch;

impl Guest for NewerPatch {
    fn init(_args: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn begin_txn(_id: String, _user: String) -> Begin {
        Begin::Skip
    }
    fn deliver(_txn: Transaction) -> Result<(), Failure> {
        let n = mailpush::driver::host::future_thing();
        Err(Failure {
            reason: format!("{n}"),
            retryable: false,
            retry_after_ms: None,
        })
    }
}

export!(NewerPatch);
