//! A driver built against a future WIT version (0.2.0): mailpush must refuse it and
//! name both versions. `wit/driver.wit` is a copy of the real contract with only the
//! package version changed.

wit_bindgen::generate!({
    // The real deps (wasi:http & co.) and a copy of driver.wit with only the version changed.
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
    world: "mailpush:driver/push-driver@0.2.0",
    generate_all,
});

use exports::mailpush::driver::driver::{Begin, Failure, Guest, Transaction};

struct Future;

impl Guest for Future {
    fn init(_args: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn begin_txn(_id: String, _user: String) -> Begin {
        Begin::Skip
    }
    fn deliver(_txn: Transaction) -> Result<(), Failure> {
        // Imports host@0.2.0, which no 0.1.x host provides: the version check must come
        // before linking, or the error would not name the versions.
        mailpush::driver::host::log(mailpush::driver::host::Level::Info, "0.2.0");
        Ok(())
    }
}

export!(Future);
