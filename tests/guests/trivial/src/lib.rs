//! The smallest useful driver: it takes every event of every transaction and does
//! nothing with it. `mailpush-bench` measures a fresh instance of it (§2): what a
//! driver costs the host before it does any work of its own.
//!
//! Argument: `fixed=all` declares the begin-txn answer at load (`fixed-begin`,
//! mailpush:driver@0.1.1), so a transaction is one call (`deliver`); without it,
//! `begin-txn` is called per transaction.

use mailpush_driver_sdk::{export_driver, Args, Driver, Failure, Transaction, Wants};

struct Trivial {
    fixed: bool,
}

impl Driver for Trivial {
    fn init(args: &Args) -> Result<Self, String> {
        Ok(Trivial {
            fixed: args.get("fixed") == Some("all"),
        })
    }

    fn fixed_wants(&self) -> Option<Wants> {
        self.fixed.then_some(Wants::All)
    }

    fn on_transaction(&mut self, _txn: &Transaction) -> Result<(), Failure> {
        Ok(())
    }
}

export_driver!(Trivial);
