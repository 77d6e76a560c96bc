//! Capability: outbound HTTP. A driver granted `allow_hosts` may use the standard
//! `wasi:http/outgoing-handler`; every request passes mailpush's policy first.
//!
//! - [`settings`]: the keys (`allow_hosts`, `allow_private`, `max_connections`, timeouts);
//! - [`policy`]: the driver-wide state (connection limit, endpoint breakers, pool);
//! - [`hooks`]: the per-instance `wasi:http` hooks that enforce it request by request;
//! - [`address`]: which addresses are private or special;
//! - [`pool`]: kept-alive connections to checked addresses;
//! - [`resolver`]: host names resolved, with a short cache.

pub mod address;
pub mod hooks;
pub mod policy;
pub mod pool;
pub mod resolver;
pub mod settings;

pub use hooks::OutboundHttp;
pub use policy::HttpPolicy;
pub use settings::HttpSettings;

/// The longest authority (`host:port`) a request may be given: a DNS name is at most
/// 253 bytes; the rest is room for a port and an IPv6 literal.
pub const MAX_AUTHORITY: usize = 1024;

/// The longest method name a request may be given.
pub const MAX_METHOD: usize = 64;

/// Links `wasi:http` (the outgoing handler and its types) into a driver's linker.
///
/// `outgoing-request.set-authority` and `set-method` are shadowed: wasmtime keeps the
/// guest's string as it is, with no bound on its length, so a guest could make the host
/// hold gigabytes in a few requests (the host resources an instance may hold assume a
/// resource holds at most [`super::limits::MAX_PER_RESOURCE`]). Longer than
/// [`MAX_AUTHORITY`] or [`MAX_METHOD`], the call answers `err` as for any invalid value.
pub fn link<T: wasmtime_wasi_http::WasiHttpView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::p2::bindings::http::types::{
        HostOutgoingRequest, Method, OutgoingRequest,
    };
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store, (request, authority): (Resource<OutgoingRequest>, Option<String>)| {
            if authority.as_ref().is_some_and(|a| a.len() > MAX_AUTHORITY) {
                return Ok((Err(()),));
            }
            let mut http = T::http(store.data_mut());
            HostOutgoingRequest::set_authority(&mut http, request, authority).map(|r| (r,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store, (request, method): (Resource<OutgoingRequest>, Method)| {
            if matches!(&method, Method::Other(m) if m.len() > MAX_METHOD) {
                return Ok((Err(()),));
            }
            let mut http = T::http(store.data_mut());
            HostOutgoingRequest::set_method(&mut http, request, method).map(|r| (r,))
        },
    )?;
    link_fields(&mut types)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `fields.from-list` and `fields.set`, shadowed: wasmtime's bindings copy every entry
/// of the list out of the guest's memory before the fields' size limit is looked at,
/// and entries may all point at the same bytes, so a guest of 32 MiB could make the host
/// copy a thousand times that in one call. Here the lengths are added up first, from
/// the guest's memory, each entry with [`FIELD_ENTRY_COST`] more, and only what fits
/// [`super::limits::FIELD_SIZE_LIMIT`] is copied; more traps the guest, as `wasi:http`
/// does for fields over the limit.
fn link_fields<T: wasmtime_wasi_http::WasiHttpView + 'static>(
    types: &mut wasmtime::component::LinkerInstance<'_, T>,
) -> wasmtime::Result<()> {
    use wasmtime::component::{Resource, WasmList, WasmStr};
    use wasmtime_wasi_http::p2::bindings::http::types::HostFields;
    use wasmtime_wasi_http::FieldMap;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store, (entries,): (WasmList<(WasmStr, WasmList<u8>)>,)| {
            let mut copied = Vec::new();
            let mut total = 0usize;
            for i in 0..entries.len() {
                let Some(entry) = entries.get(&mut store, i) else {
                    break;
                };
                let (name, value) = entry?;
                total = total.saturating_add(value.len() + FIELD_ENTRY_COST);
                check_fields_size(total)?;
                let name = name.to_str(&store)?;
                total = total.saturating_add(name.len());
                check_fields_size(total)?;
                copied.push((name.into_owned(), value.as_le_slice(&store).to_vec()));
            }
            let mut http = T::http(store.data_mut());
            match HostFields::from_list(&mut http, copied) {
                Ok(fields) => Ok((Ok(fields),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store,
         (fields, name, values): (Resource<FieldMap>, WasmStr, WasmList<WasmList<u8>>)| {
            let mut copied = Vec::new();
            let mut total = 0usize;
            for i in 0..values.len() {
                let Some(value) = values.get(&mut store, i) else {
                    break;
                };
                let value = value?;
                total = total.saturating_add(value.len() + FIELD_ENTRY_COST);
                check_fields_size(total)?;
                copied.push(value.as_le_slice(&store).to_vec());
            }
            let name = name.to_str(&store)?.into_owned();
            let mut http = T::http(store.data_mut());
            match HostFields::set(&mut http, fields, name, copied) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    Ok(())
}

/// What one entry of a fields list costs the host beyond its bytes (its name and value
/// allocations, the header value wasmtime makes of it): counted, so a list of a million
/// empty entries is refused like one of long ones.
const FIELD_ENTRY_COST: usize = 64;

/// Traps once fields being copied from the guest exceed the fields' size limit.
fn check_fields_size(total: usize) -> wasmtime::Result<()> {
    if total > super::limits::FIELD_SIZE_LIMIT {
        wasmtime::bail!(
            "HTTP fields larger than {} bytes",
            super::limits::FIELD_SIZE_LIMIT
        );
    }
    Ok(())
}
