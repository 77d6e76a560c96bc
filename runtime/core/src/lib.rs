//! The contracts every part of mailpush shares: the event model and its canonical JSON,
//! driver arguments and their one duration/size syntax, METADATA lookup, the [`Driver`]
//! trait built-in and wasm drivers implement, and the backoff every retry uses.

pub mod args;
pub mod backoff;
pub mod circuit;
pub mod driver;
pub mod event;
pub mod metadata;
pub mod ox_body;
pub mod suggest;
pub mod text;
pub mod transaction;
pub mod units;

pub use args::DriverArgs;
pub use circuit::{BreakerConfig, CircuitState};
pub use driver::{
    group, Begin, Driver, DriverFactory, DriverInit, DriverTxn, EndpointCircuit, Failure,
    Freshness, InitError, Initialised, Loading, MailboxRecord, MessageRecord, Record,
};
pub use event::{Event, EventName, EventSet};
pub use metadata::{MetadataError, MetadataLookup, NoMetadata};
pub use transaction::{
    parse_ndjson, parse_stream, parse_stream_bytes, LineError, ParseError, Transaction,
};
