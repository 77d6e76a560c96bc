//! What each `mailpush` subcommand does, as library functions the CLI calls and tests
//! reach without spawning the binary. The CLI (`crate::cli`) only parses arguments,
//! prints these results and sets exit codes. `mailpush run` is [`crate::daemon`].

pub mod check;
pub mod control;
pub mod dlq;
pub mod driver_new;
pub mod driver_test;
pub mod metadata;
pub mod send;
