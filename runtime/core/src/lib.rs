//! The contracts every part of mailpush shares: the event model and its canonical JSON,
//! driver arguments, METADATA lookup, and the [`Driver`] trait built-in and wasm drivers
//! implement.

pub mod args;
pub mod breaker;
pub mod driver;
pub mod event;
pub mod metadata;
pub mod transaction;

pub use args::DriverArgs;
pub use breaker::{Admission, BreakerConfig, CircuitBreaker, CircuitState, EndpointBreakers};
pub use driver::{
    group, Begin, Driver, DriverFactory, DriverInit, DriverTxn, EndpointCircuit, Failure,
    InitError, Initialised, MailboxRecord, MessageRecord, Record,
};
pub use event::{Event, EventName, EventSet};
pub use metadata::{MetadataError, MetadataLookup, NoMetadata};
pub use transaction::{parse_ndjson, parse_stream, LineError, ParseError, Transaction};
