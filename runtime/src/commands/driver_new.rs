//! `mailpush driver new NAME --lang rust|js|python`: a new driver project that builds
//! with one command and tests itself with `mailpush driver test`. Everything it needs
//! from mailpush — the WIT contract and the language's SDK — is copied into it, so it
//! builds outside mailpush's repository.

use std::path::{Path, PathBuf};

/// The languages a driver can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

/// Why a project could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("driver name `{0}`: use lower-case letters, digits, `-` and `_`, starting with a letter (e.g. my-driver)")]
    Name(String),
    #[error("driver name `{0}`: {1}; choose another name")]
    Reserved(String, &'static str),
    #[error("{} already exists; choose another name or directory", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {}", .0.display(), .1)]
    Write(PathBuf, std::io::Error),
}

/// The WIT contract (`wit/`), as files relative to a `wit` folder.
const WIT: &[(&str, &str)] = &[
    ("driver.wit", include_str!("../../../wit/driver.wit")),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    (
        "deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

/// The Rust SDK and the crate it uses, as files relative to the project's `sdk/`.
const RUST_SDK: &[(&str, &str)] = &[
    (
        "driver-sdk/Cargo.toml",
        include_str!("../../../drivers/sdk/Cargo.toml"),
    ),
    (
        "driver-sdk/src/lib.rs",
        include_str!("../../../drivers/sdk/src/lib.rs"),
    ),
    (
        "driver-sdk/src/http.rs",
        include_str!("../../../drivers/sdk/src/http.rs"),
    ),
    (
        "http-failure/Cargo.toml",
        include_str!("../../../drivers/http-failure/Cargo.toml"),
    ),
    (
        "http-failure/src/lib.rs",
        include_str!("../../../drivers/http-failure/src/lib.rs"),
    ),
];

/// The JavaScript SDK, as files relative to the project's `sdk/`.
const JS_SDK: &[(&str, &str)] = &[
    ("index.js", include_str!("../../../drivers/sdk-js/index.js")),
    (
        "index.d.ts",
        include_str!("../../../drivers/sdk-js/index.d.ts"),
    ),
];

const JS_TEMPLATES: &[(&str, &str)] = &[
    ("driver.js", include_str!("scaffold/js/driver.js.tmpl")),
    (
        "package.json",
        include_str!("scaffold/js/package.json.tmpl"),
    ),
    ("build.sh", include_str!("scaffold/js/build.sh.tmpl")),
    ("test.sh", include_str!("scaffold/js/test.sh.tmpl")),
    ("README.md", include_str!("scaffold/js/README.md.tmpl")),
];

/// The Python SDK, as files relative to the project's `sdk/`.
const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "mailpush_driver/__init__.py",
        include_str!("../../../drivers/sdk-python/mailpush_driver/__init__.py"),
    ),
    (
        "mailpush_driver/failure.py",
        include_str!("../../../drivers/sdk-python/mailpush_driver/failure.py"),
    ),
    (
        "mailpush_driver/http.py",
        include_str!("../../../drivers/sdk-python/mailpush_driver/http.py"),
    ),
    (
        "mailpush_driver/webhooks.py",
        include_str!("../../../drivers/sdk-python/mailpush_driver/webhooks.py"),
    ),
];

const PYTHON_TEMPLATES: &[(&str, &str)] = &[
    ("app.py", include_str!("scaffold/python/app.py.tmpl")),
    ("build.sh", include_str!("scaffold/python/build.sh.tmpl")),
    ("test.sh", include_str!("scaffold/python/test.sh.tmpl")),
    ("README.md", include_str!("scaffold/python/README.md.tmpl")),
];

const RUST_TEMPLATES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("scaffold/rust/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/rust/lib.rs.tmpl")),
    ("test.sh", include_str!("scaffold/rust/test.sh.tmpl")),
    ("README.md", include_str!("scaffold/rust/README.md.tmpl")),
    (
        "rust-toolchain.toml",
        include_str!("scaffold/rust/rust-toolchain.toml.tmpl"),
    ),
];

fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Why `name` cannot be a Rust driver's name, if it cannot: cargo refuses keywords and
/// the names of Rust's own libraries as package names, and the scaffold's type would
/// clash with a type the SDK imports into its `lib.rs`.
fn reserved_in_rust(name: &str) -> Option<&'static str> {
    const KEYWORDS: &[&str] = &[
        "abstract",
        "as",
        "async",
        "await",
        "become",
        "box",
        "break",
        "const",
        "continue",
        "crate",
        "do",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "final",
        "fn",
        "for",
        "gen",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "macro",
        "match",
        "mod",
        "move",
        "mut",
        "override",
        "priv",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "try",
        "type",
        "typeof",
        "unsafe",
        "unsized",
        "use",
        "virtual",
        "where",
        "while",
        "yield",
        "alloc",
        "core",
        "proc_macro",
        "proc-macro",
        "std",
        "test",
    ];
    // The SDK's types the template imports, and the standard ones it names.
    const TYPES: &[&str] = &[
        "Args",
        "Driver",
        "Failure",
        "Transaction",
        "String",
        "Result",
        "Option",
        "Vec",
        "Box",
        "Ok",
        "Err",
        "Some",
        "None",
        "Self",
    ];
    if KEYWORDS.contains(&name) {
        return Some("a Rust keyword or library name, which cargo refuses as a package name");
    }
    if name.replace('-', "_") == "mailpush_driver_sdk" {
        return Some("the SDK's own package name, which the project depends on");
    }
    let t = type_name(name);
    TYPES
        .contains(&t.as_str())
        .then_some("its type would clash with the SDK's or Rust's type of that name")
}

/// `my-driver` → `MyDriver`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(template: &str, name: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{file}}", &name.replace('-', "_"))
        .replace("{{type}}", &type_name(name))
}

fn write(
    root: &Path,
    rel: &str,
    text: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), ScaffoldError> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ScaffoldError::Write(dir.to_path_buf(), e))?;
    }
    std::fs::write(&path, text).map_err(|e| ScaffoldError::Write(path.clone(), e))?;
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    }
    written.push(path);
    Ok(())
}

/// Makes the project `parent/NAME`; returns the files written.
pub fn scaffold(parent: &Path, name: &str, lang: Lang) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    if lang == Lang::Rust {
        if let Some(why) = reserved_in_rust(name) {
            return Err(ScaffoldError::Reserved(name.to_string(), why));
        }
    }
    let root = parent.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let mut written = Vec::new();
    match lang {
        Lang::Rust => {
            for (rel, text) in RUST_TEMPLATES {
                write(&root, rel, &fill(text, name), &mut written)?;
            }
            for (rel, text) in RUST_SDK {
                // In mailpush's tree the SDK finds the WIT at ../../wit; here at ../wit.
                // And it is a workspace of its own there; here a member of the project's.
                let text = text
                    .replace("path: \"../../wit\"", "path: \"../wit\"")
                    .replace("\n[workspace]\n", "\n");
                write(&root, &format!("sdk/{rel}"), &text, &mut written)?;
            }
            for (rel, text) in WIT {
                write(&root, &format!("sdk/wit/{rel}"), text, &mut written)?;
            }
        }
        Lang::Js | Lang::Python => {
            let (templates, sdk) = if lang == Lang::Js {
                (JS_TEMPLATES, JS_SDK)
            } else {
                (PYTHON_TEMPLATES, PYTHON_SDK)
            };
            for (rel, text) in templates {
                write(&root, rel, &fill(text, name), &mut written)?;
            }
            for (rel, text) in sdk {
                write(&root, &format!("sdk/{rel}"), text, &mut written)?;
            }
        }
    }
    for (rel, text) in WIT {
        if lang != Lang::Rust {
            write(&root, &format!("sdk/wit/{rel}"), text, &mut written)?;
        }
    }
    Ok(written)
}

/// What to do next, for the command's output.
pub fn next_steps(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => format!(
            "Next:\n  cd {name}\n  ./test.sh    # builds target/wasm32-wasip2/release/{}.wasm (rustup fetches the target the first time) and runs `mailpush driver test` on it",
            name.replace('-', "_")
        ),
        Lang::Js => format!(
            "Next:\n  cd {name}\n  ./test.sh    # builds {name}.wasm (npm installs componentize-js the first time) and runs `mailpush driver test` on it"
        ),
        Lang::Python => format!(
            "Next:\n  cd {name}\n  ./test.sh    # builds {name}.wasm (componentize-py goes into .venv the first time) and runs `mailpush driver test` on it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert!(valid("my-driver"));
        assert!(valid("x1_y"));
        assert!(!valid("My"));
        assert!(!valid("1x"));
        assert!(!valid("a/b"));
        assert!(!valid(""));
        // Rust only: names cargo refuses, and types the template imports from the SDK.
        for name in [
            "driver",
            "failure",
            "args",
            "transaction",
            "string",
            "result",
            "fn",
            "test",
            "std",
            "mailpush-driver-sdk",
        ] {
            assert!(reserved_in_rust(name).is_some(), "{name}");
        }
        assert!(reserved_in_rust("my-driver").is_none());
        let dir = tempfile::tempdir().unwrap();
        let e = scaffold(dir.path(), "driver", Lang::Rust).unwrap_err();
        assert!(e.to_string().contains("clash with the SDK's"), "{e}");
        assert!(scaffold(dir.path(), "driver", Lang::Js).is_ok());
        assert_eq!(type_name("my-driver_two"), "MyDriverTwo");
    }

    #[test]
    fn a_rust_project_has_its_sdk_and_wit() {
        let dir = tempfile::tempdir().unwrap();
        let files = scaffold(dir.path(), "hello-push", Lang::Rust).unwrap();
        let root = dir.path().join("hello-push");
        assert!(files.contains(&root.join("sdk/wit/deps/http.wit")));
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("struct HelloPush"), "{lib}");
        let sdk = std::fs::read_to_string(root.join("sdk/driver-sdk/src/lib.rs")).unwrap();
        assert!(sdk.contains("path: \"../wit\""));
        let test = std::fs::read_to_string(root.join("test.sh")).unwrap();
        assert!(test.contains("/wasm32-wasip2/release/hello_push.wasm"));
        assert!(matches!(
            scaffold(dir.path(), "hello-push", Lang::Rust),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            scaffold(dir.path(), "Bad Name", Lang::Rust),
            Err(ScaffoldError::Name(_))
        ));
    }
}
