//! Host bindings generated from `wit/` (the `mailpush:driver` package). Kept apart so
//! hand-written code never mixes with macro output.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "push-driver",
    imports: { default: async | trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.1";
/// The WIT package name.
pub const WIT_PACKAGE: &str = "mailpush:driver";
