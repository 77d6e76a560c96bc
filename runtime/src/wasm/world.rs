//! Which components are drivers: a component must export `mailpush:driver/driver` of a
//! version compatible with this host (same major and minor for 0.x) and import nothing
//! but what mailpush provides.

use std::path::Path;

use mailpush_core::InitError;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;

use super::bindings::{WIT_PACKAGE, WIT_VERSION};

/// Checks that the component exports `mailpush:driver/driver` of a compatible version
/// and imports only `mailpush:driver/host` of a compatible version; returns its version.
pub fn check_world(
    component: &Component,
    engine: &wasmtime::Engine,
    path: &Path,
) -> Result<String, InitError> {
    let ty = component.component_type();
    let mut found = None;
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_string());
        if let Some(version) = name.strip_prefix("mailpush:driver/driver@") {
            if matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                found = Some(version.to_string());
            }
        }
    }
    let Some(version) = found else {
        return Err(InitError::new(format!(
            "{} does not export {WIT_PACKAGE}/driver (it exports: {}); build it for the {WIT_PACKAGE}/push-driver world: Rust with drivers/sdk, JavaScript with drivers/sdk-js and componentize-js (--world-name push-driver), Python with drivers/sdk-python and componentize-py (-w push-driver); `mailpush driver new NAME --lang rust|js|python` sets one up",
            path.display(),
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        )));
    };
    let compatible = |v: &str| same_minor(v, WIT_VERSION);
    if !compatible(&version) {
        return Err(InitError::new(format!(
            "{} was built against {WIT_PACKAGE}@{version}, but this mailpush provides {WIT_PACKAGE}@{WIT_VERSION}; rebuild the driver against this mailpush's wit/ (Rust: drivers/sdk; JavaScript: componentize-js --wit wit; Python: componentize-py -d wit)",
            path.display()
        )));
    }
    for (name, _) in ty.imports(engine) {
        if let Some(v) = name.strip_prefix("mailpush:driver/host@") {
            if !compatible(v) {
                return Err(InitError::new(format!(
                    "{} imports {WIT_PACKAGE}/host@{v}, but this mailpush provides {WIT_PACKAGE}@{WIT_VERSION}",
                    path.display()
                )));
            }
        }
    }
    Ok(version)
}

/// Whether version `a` is a later patch than `b` of the same 0.x minor (a component
/// built against a newer contract than this host's may import what it lacks).
pub fn newer_patch(a: &str, b: &str) -> bool {
    let patch = |v: &str| v.split('.').nth(2).and_then(|p| p.parse::<u64>().ok());
    same_minor(a, b) && patch(a) > patch(b)
}

/// Semver compatibility for 0.x: same major and minor.
fn same_minor(a: &str, b: &str) -> bool {
    let key = |v: &str| {
        let mut it = v.split('.');
        (it.next().map(str::to_string), it.next().map(str::to_string))
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::{newer_patch, same_minor};

    #[test]
    fn wit_versions_compatible_within_a_minor() {
        assert!(same_minor("0.1.0", "0.1.0"));
        assert!(same_minor("0.1.3", "0.1.0"));
        assert!(!same_minor("0.2.0", "0.1.0"));
        assert!(!same_minor("1.1.0", "0.1.0"));
    }

    #[test]
    fn a_later_patch_is_newer() {
        assert!(newer_patch("0.1.2", "0.1.1"));
        assert!(!newer_patch("0.1.0", "0.1.1"));
        assert!(!newer_patch("0.1.1", "0.1.1"));
        assert!(!newer_patch("0.2.5", "0.1.1"));
    }
}
