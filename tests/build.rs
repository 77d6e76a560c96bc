//! Builds the guest components (example drivers and hostile test drivers) from source
//! for wasm32-wasip2 and exposes their paths to the tests as `GUEST_<NAME>` env vars.
//! They go to `target/guest` so the nested cargo never waits on the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (env name, manifest relative to the repository root, artifact file name)
const GUESTS: &[(&str, &str, &str)] = &[
    (
        "HOSTILE",
        "tests/guests/hostile/Cargo.toml",
        "hostile_driver.wasm",
    ),
    (
        "WEBHOOK",
        "examples/webhook/Cargo.toml",
        "webhook_driver.wasm",
    ),
    (
        "OX_WASM",
        "examples/ox-wasm/Cargo.toml",
        "ox_wasm_driver.wasm",
    ),
    (
        "TENANT_FILTER",
        "examples/tenant-filter/Cargo.toml",
        "tenant_filter_driver.wasm",
    ),
    (
        "BENCH_HANDLER",
        "tests/guests/bench-handler/Cargo.toml",
        "bench_handler_driver.wasm",
    ),
    (
        "FUTURE_VERSION",
        "tests/guests/future-version/Cargo.toml",
        "future_version_driver.wasm",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf();
    let target = root.join("target").join("guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for dir in ["drivers/sdk", "wit", "examples", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for (env, manifest, artifact) in GUESTS {
        let manifest = root.join(manifest);
        if !manifest.exists() {
            continue;
        }
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_PRIMARY_PACKAGE")
            // Under `cargo clippy` the outer build wraps rustc; guests are built plainly.
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}", manifest.display()));
        assert!(
            status.success(),
            "building guest {} failed",
            manifest.display()
        );
        let path: PathBuf = target.join("wasm32-wasip2").join("release").join(artifact);
        assert!(Path::new(&path).exists(), "missing {}", path.display());
        println!("cargo:rustc-env=GUEST_{env}={}", path.display());
    }
}
