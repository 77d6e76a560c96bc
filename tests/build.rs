//! Builds the guest components (example drivers and hostile test drivers) from source
//! for wasm32-wasip2 and exposes their paths to the tests as `GUEST_<NAME>` env vars.
//! They go to `target/guest` so the nested cargo never waits on the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (env name, manifest relative to the repository root, artifact file name, extra
/// cargo arguments). A guest built with extra arguments gets a target dir of its own.
const GUESTS: &[(&str, &str, &str, &[&str])] = &[
    (
        "HOSTILE",
        "tests/guests/hostile/Cargo.toml",
        "hostile_driver.wasm",
        &[],
    ),
    // The hostile driver without the modes that wait: it imports nothing to wait on, so
    // mailpush calls it synchronously.
    (
        "HOSTILE_NO_WAIT",
        "tests/guests/hostile/Cargo.toml",
        "hostile_driver.wasm",
        &["--no-default-features"],
    ),
    (
        "WEBHOOK",
        "examples/webhook/Cargo.toml",
        "webhook_driver.wasm",
        &[],
    ),
    (
        "OX_WASM",
        "examples/ox-wasm/Cargo.toml",
        "ox_wasm_driver.wasm",
        &[],
    ),
    (
        "TENANT_FILTER",
        "examples/tenant-filter/Cargo.toml",
        "tenant_filter_driver.wasm",
        &[],
    ),
    (
        "BENCH_HANDLER",
        "tests/guests/bench-handler/Cargo.toml",
        "bench_handler_driver.wasm",
        &[],
    ),
    // A driver that does nothing: the floor of a fresh instance in mailpush-bench.
    (
        "TRIVIAL",
        "tests/guests/trivial/Cargo.toml",
        "trivial_driver.wasm",
        &[],
    ),
    (
        "CONTRACT_0_1_0",
        "tests/guests/contract-0.1.0/Cargo.toml",
        "contract_v010_driver.wasm",
        &[],
    ),
    (
        "NEWER_PATCH",
        "tests/guests/newer-patch/Cargo.toml",
        "newer_patch_driver.wasm",
        &[],
    ),
    (
        "FUTURE_VERSION",
        "tests/guests/future-version/Cargo.toml",
        "future_version_driver.wasm",
        &[],
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
    for dir in [
        "drivers/sdk",
        "drivers/sdk-js",
        "drivers/sdk-python",
        "wit",
        "examples",
        "tests/guests",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for (env, manifest, artifact, extra) in GUESTS {
        let manifest = root.join(manifest);
        let target = if extra.is_empty() {
            target.clone()
        } else {
            target.join(env.to_lowercase())
        };
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
            .args(*extra)
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
    build_language_guests(&root, &root.join("target").join("guest-lang"));
}

/// The JavaScript and Python drivers (tests/guests/js-raw, py-raw and the webhook
/// examples), built with componentize-js and componentize-py when examples/toolchains.sh
/// has installed them (CI does); without them the tests that need these drivers say they
/// were skipped (and fail under CI). Rebuilt only when a source is newer than the
/// components: each build takes 10–20 s.
fn build_language_guests(root: &Path, out: &Path) {
    let js_prefix =
        std::env::var("MAILPUSH_JS_PREFIX").unwrap_or_else(|_| "/opt/mailpush-ci/js".into());
    let py_venv =
        std::env::var("MAILPUSH_PY_VENV").unwrap_or_else(|_| "/opt/mailpush-ci/py".into());
    println!("cargo:rerun-if-env-changed=MAILPUSH_JS_PREFIX");
    println!("cargo:rerun-if-env-changed=MAILPUSH_PY_VENV");
    let have = Path::new(&js_prefix)
        .join("node_modules/@bytecodealliance/componentize-js/src/cli.js")
        .exists()
        && Path::new(&py_venv).join("bin/componentize-py").exists();
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the JavaScript and Python toolchains: run examples/toolchains.sh"
        );
        println!("cargo:warning=componentize-js/componentize-py not installed (examples/toolchains.sh): the JavaScript and Python driver tests will be skipped");
        return;
    }
    let outputs = ["js_raw", "js_sdk", "py_raw", "webhook_js", "webhook_py"];
    let sources = [
        "tests/guests/js-raw",
        "tests/guests/js-sdk",
        "tests/guests/py-raw",
        "tests/guests/build-lang.sh",
        "examples/webhook-js",
        "examples/webhook-py",
        "drivers/sdk-js",
        "drivers/sdk-python",
        "wit",
    ];
    let newest_source = sources.iter().filter_map(|s| newest(&root.join(s))).max();
    let oldest_output = outputs
        .iter()
        .map(|o| {
            std::fs::metadata(out.join(format!("{o}.wasm")))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min());
    let fresh = matches!((oldest_output, newest_source), (Some(o), Some(n)) if o > n);
    if !fresh {
        let status = Command::new(root.join("tests/guests/build-lang.sh"))
            .arg(out)
            .env("MAILPUSH_JS_PREFIX", &js_prefix)
            .env("MAILPUSH_PY_VENV", &py_venv)
            .status()
            .unwrap_or_else(|e| panic!("cannot run tests/guests/build-lang.sh: {e}"));
        assert!(
            status.success(),
            "building the JavaScript and Python test drivers failed"
        );
    }
    for o in outputs {
        println!(
            "cargo:rustc-env=GUEST_{}={}",
            o.to_ascii_uppercase(),
            out.join(format!("{o}.wasm")).display()
        );
    }
}

/// The newest modification time of a file or of the files under a directory.
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.ends_with(".wasm") && name != "__pycache__" && name != "node_modules"
        })
        .filter_map(|e| newest(&e.path()))
        .max()
}
