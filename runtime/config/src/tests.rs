//! Config parsing: Dovecot's driver numbering and value syntax (dovecot-push.md §2),
//! the file syntax (blocks, comments, quotes, includes), every error with its place
//! and text, the `mailpush { }` block.

use super::*;

use std::net::SocketAddr;
use std::time::Duration;

use super::settings::SETTINGS;

pub(super) const CONF: &str = "/etc/mailpush/mailpush.conf";

pub(super) fn parse(text: &str) -> Config {
    Config::parse(Path::new(CONF), text).unwrap_or_else(|e| panic!("rejected:\n{e}\n---\n{text}"))
}

pub(super) fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(Path::new(CONF), text) {
        Ok(c) => panic!("accepted {text}: {c:?}"),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "empty error list for {text}");
            errors
        }
    }
}

/// The only error of `text`.
pub(super) fn error(text: &str) -> ConfigError {
    let mut errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.remove(0)
}

/// Wraps settings in a `plugin { }` block: body line N is file line N + 1.
fn plugin(body: &str) -> String {
    format!("plugin {{\n{body}\n}}\n")
}

pub(super) fn at(line: usize) -> Option<Location> {
    Some(Location {
        file: PathBuf::from(CONF),
        line,
    })
}

fn numbers(c: &Config) -> Vec<u32> {
    c.drivers.iter().map(|d| d.number).collect()
}

fn names(c: &Config) -> Vec<&str> {
    c.drivers.iter().map(|d| d.name.as_str()).collect()
}

pub(super) fn warnings(c: &Config) -> Vec<String> {
    c.warnings.iter().map(|w| w.to_string()).collect()
}

pub(super) fn assert_error(e: &ConfigError, line: usize, text: &str, needles: &[&str]) {
    assert_eq!(e.location, at(line), "{e}");
    assert_eq!(e.text, text, "{e}");
    for n in needles {
        assert!(e.message.contains(n), "message lacks {n:?}: {e}");
    }
    // Display: `file:line: message` then the offending text.
    assert_eq!(
        e.to_string(),
        format!("{CONF}:{line}: {}\n    | {text}", e.message)
    );
}

// ---------------------------------------------------------------------------------
// Numbering (§2.1)
// ---------------------------------------------------------------------------------

#[test]
fn drivers_are_numbered_driver_then_2_then_3() {
    let c = parse(&plugin(
        "  push_notification_driver = dlog\n\
         \x20 push_notification_driver2 = ox:url=http://ox.example/preliminary\n\
         \x20 push_notification_driver3 = wasm:file=webhook.wasm",
    ));
    assert_eq!(numbers(&c), [1, 2, 3]);
    assert_eq!(names(&c), ["dlog", "ox", "wasm"]);
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.setting.as_str())
            .collect::<Vec<_>>(),
        [
            "push_notification_driver",
            "push_notification_driver2",
            "push_notification_driver3"
        ]
    );
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| Some(d.location.clone()))
            .collect::<Vec<_>>(),
        [at(2), at(3), at(4)]
    );
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

#[test]
fn numbering_does_not_depend_on_file_order() {
    let c = parse(&plugin(
        "push_notification_driver3 = dlog:c\n\
         push_notification_driver = dlog:a\n\
         push_notification_driver2 = dlog:b",
    ));
    assert_eq!(numbers(&c), [1, 2, 3]);
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.raw.as_deref())
            .collect::<Vec<_>>(),
        [Some("a"), Some("b"), Some("c")]
    );
}

#[test]
fn numbering_stops_at_the_first_gap_and_warns() {
    let c = parse(&plugin(
        "push_notification_driver = dlog\n\
         push_notification_driver2 = dlog:x\n\
         push_notification_driver4 = ox:url=http://x/\n\
         push_notification_driver5 = dlog",
    ));
    assert_eq!(numbers(&c), [1, 2]);
    assert_eq!(c.warnings.len(), 2, "{:?}", warnings(&c));
    let w4 = c
        .warnings
        .iter()
        .find(|w| w.message.starts_with("push_notification_driver4"))
        .expect("warning for driver4");
    assert_eq!(w4.location, at(4));
    assert!(w4.message.contains("is ignored"), "{w4}");
    assert!(
        w4.message.contains("push_notification_driver3 is missing"),
        "{w4}"
    );
    let w5 = c
        .warnings
        .iter()
        .find(|w| w.message.starts_with("push_notification_driver5"))
        .expect("warning for driver5");
    assert_eq!(w5.location, at(5));
    assert!(w5.message.contains("is ignored"), "{w5}");
}

#[test]
fn a_missing_first_driver_ignores_driver2() {
    let c = parse(&plugin("push_notification_driver2 = dlog"));
    assert!(c.drivers.is_empty());
    // The gap, then that nothing is configured.
    assert_eq!(c.warnings.len(), 2, "{:?}", warnings(&c));
    assert!(c.warnings[1]
        .message
        .starts_with("no push notification driver is configured"));
    assert_eq!(c.warnings[0].location, at(2));
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver2 is ignored"),
        "{}",
        c.warnings[0]
    );
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver is missing"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn an_empty_value_stops_the_numbering() {
    for empty in [
        "push_notification_driver2 =",
        "push_notification_driver2 = \"\"",
    ] {
        let c = parse(&plugin(&format!(
            "push_notification_driver = dlog\n{empty}\npush_notification_driver3 = dlog"
        )));
        assert_eq!(numbers(&c), [1], "{empty}");
        let w = warnings(&c);
        assert_eq!(w.len(), 2, "{w:?}");
        let w2 = c
            .warnings
            .iter()
            .find(|w| w.message.starts_with("push_notification_driver2"))
            .expect("warning for driver2");
        assert_eq!(w2.location, at(3));
        assert!(w2.message.contains("is empty"), "{w2}");
        let w3 = c
            .warnings
            .iter()
            .find(|w| w.message.starts_with("push_notification_driver3"))
            .expect("warning for driver3");
        assert_eq!(w3.location, at(4));
        assert!(w3.message.contains("is ignored"), "{w3}");
    }
}

#[test]
fn settings_after_an_empty_one_say_it_is_empty() {
    // driver2 exists but is empty: driver3 and driver4 are ignored *because it is
    // empty*, not because it is missing.
    let c = parse(&plugin(
        "push_notification_driver = dlog\n\
         push_notification_driver2 =\n\
         push_notification_driver3 = dlog\n\
         push_notification_driver4 = dlog",
    ));
    assert_eq!(numbers(&c), [1]);
    let w = warnings(&c);
    assert_eq!(w.len(), 3, "{w:?}");
    for later in ["push_notification_driver3", "push_notification_driver4"] {
        let w = c
            .warnings
            .iter()
            .find(|w| w.message.starts_with(later))
            .unwrap_or_else(|| panic!("warning for {later}"));
        assert!(
            w.message.contains(&format!(
                "{later} is ignored: push_notification_driver2 is empty"
            )),
            "{w}"
        );
        assert!(!w.message.contains("missing,"), "{w}");
    }

    // The unnumbered first setting empty (whitespace only): driver2 is ignored because
    // it is empty.
    let c = parse(&plugin(
        "push_notification_driver = \"  \"\npush_notification_driver2 = dlog",
    ));
    assert!(c.drivers.is_empty());
    assert_eq!(c.warnings.len(), 2, "{:?}", warnings(&c));
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver2 is ignored: push_notification_driver is empty"),
        "{}",
        c.warnings[0]
    );

    // An absent setting is still reported as missing.
    let c = parse(&plugin(
        "push_notification_driver = dlog\npush_notification_driver3 = dlog",
    ));
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver3 is ignored: push_notification_driver2 is missing"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn non_canonical_numbers_are_not_driver_settings() {
    // `02` is not the name Dovecot probes for driver 2: with driver2 absent it must not
    // be called the empty stopping setting, and with driver2 present it must not pass
    // silently as if it were driver 2.
    for body in [
        "push_notification_driver = dlog\npush_notification_driver02 = dlog",
        "push_notification_driver = dlog\npush_notification_driver2 = dlog\n\
         push_notification_driver02 = dlog",
    ] {
        let c = parse(&plugin(body));
        assert_eq!(
            names(&c).len(),
            body.lines().count() - 1,
            "driver02 must not load: {body}"
        );
        let w = warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("push_notification_driver02 is not a driver setting"),
            "{w:?}"
        );
        assert!(!w[0].contains("is empty"), "{w:?}");
    }
    for key in ["push_notification_driver+2", "push_notification_driver003"] {
        let c = parse(&plugin(&format!(
            "push_notification_driver = dlog\n{key} = dlog"
        )));
        assert_eq!(numbers(&c), [1]);
        assert_eq!(
            warnings(&c),
            [format!(
                "{CONF}:3: {key} is not a driver setting and is ignored"
            )]
        );
    }
    // driver0 is never probed either.
    let c = parse(&plugin(
        "push_notification_driver = dlog\npush_notification_driver0 = dlog",
    ));
    assert_eq!(numbers(&c), [1]);
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver0 is never read"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn driver1_is_never_read() {
    let c = parse(&plugin(
        "push_notification_driver = dlog\npush_notification_driver1 = ox:url=http://x/",
    ));
    assert_eq!(numbers(&c), [1]);
    assert_eq!(names(&c), ["dlog"]);
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(3));
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driver1 is never read"),
        "{}",
        c.warnings[0]
    );
    assert!(
        c.warnings[0].message.contains("push_notification_driver2"),
        "{}",
        c.warnings[0]
    );
    assert_eq!(
        c.warnings[0].to_string(),
        format!("{CONF}:3: {}", c.warnings[0].message)
    );

    // driver1 alone loads nothing (and says so, then that nothing is configured).
    let c = parse(&plugin("push_notification_driver1 = dlog"));
    assert!(c.drivers.is_empty());
    assert_eq!(c.warnings.len(), 2);
}

#[test]
fn other_push_settings_with_the_prefix_are_warned_about() {
    let c = parse(&plugin(
        "push_notification_driver = dlog\npush_notification_driverx = dlog",
    ));
    assert_eq!(numbers(&c), [1]);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0]
            .message
            .contains("push_notification_driverx is not a driver setting"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn backend_is_the_fallback_when_no_driver_is_set() {
    let c = parse(&plugin(
        "push_notification_backend = dlog\npush_notification_backend2 = ox:url=http://x/",
    ));
    assert_eq!(numbers(&c), [1, 2]);
    assert_eq!(names(&c), ["dlog", "ox"]);
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.setting.as_str())
            .collect::<Vec<_>>(),
        ["push_notification_backend", "push_notification_backend2"]
    );
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));

    // An empty push_notification_driver counts as unset.
    let c = parse(&plugin(
        "push_notification_driver =\npush_notification_backend = dlog",
    ));
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.setting.as_str())
            .collect::<Vec<_>>(),
        ["push_notification_backend"]
    );

    // backend numbering has the same gap rule.
    let c = parse(&plugin(
        "push_notification_backend = dlog\npush_notification_backend3 = dlog",
    ));
    assert_eq!(numbers(&c), [1]);
    assert!(
        warnings(&c)
            .iter()
            .any(|w| w.contains("push_notification_backend3 is ignored")),
        "{:?}",
        warnings(&c)
    );
}

#[test]
fn backend_is_ignored_when_a_driver_is_set() {
    let c = parse(&plugin(
        "push_notification_driver = ox:url=http://x/\npush_notification_backend = dlog",
    ));
    assert_eq!(names(&c), ["ox"]);
    assert_eq!(c.drivers[0].setting, "push_notification_driver");
    assert!(
        warnings(&c)
            .iter()
            .any(|w| w.contains("push_notification_backend* settings are ignored")),
        "{:?}",
        warnings(&c)
    );
}

// ---------------------------------------------------------------------------------
// Value syntax (§2.2)
// ---------------------------------------------------------------------------------

#[test]
fn value_splits_at_the_first_colon() {
    let c = parse(&plugin(
        "push_notification_driver = ox:url=http://login:pass@node1.domain.tld:8009/preliminary?a=b user_from_metadata cache_lifetime=60s",
    ));
    let d = &c.drivers[0];
    assert_eq!(d.name, "ox");
    assert_eq!(
        d.raw.as_deref(),
        Some(
            "url=http://login:pass@node1.domain.tld:8009/preliminary?a=b user_from_metadata cache_lifetime=60s"
        )
    );
    assert_eq!(
        d.args.get("url"),
        Some("http://login:pass@node1.domain.tld:8009/preliminary?a=b")
    );
    // A bare flag gets "" (present, empty), not absent.
    assert_eq!(d.args.get("user_from_metadata"), Some(""));
    assert_eq!(d.args.get("cache_lifetime"), Some("60s"));
    assert_eq!(d.args.iter().count(), 3);
}

#[test]
fn raw_is_none_without_colon_and_empty_with_trailing_colon() {
    let c = parse(&plugin(
        "push_notification_driver = dlog\npush_notification_driver2 = dlog:",
    ));
    assert_eq!(c.drivers[0].raw, None);
    assert!(c.drivers[0].args.is_empty());
    assert_eq!(c.drivers[1].raw.as_deref(), Some(""));
    assert!(c.drivers[1].args.is_empty());
}

#[test]
fn driver_name_case_is_preserved() {
    let c = parse(&plugin(
        "push_notification_driver = DLog\npush_notification_driver2 = OX:url=http://x/",
    ));
    assert_eq!(names(&c), ["DLog", "OX"]);
}

#[test]
fn args_split_on_spaces_only() {
    let c = parse(&plugin(
        "push_notification_driver = dlog:a=1   b=x=y\tc d=1 d=2",
    ));
    let d = &c.drivers[0];
    assert_eq!(d.raw.as_deref(), Some("a=1   b=x=y\tc d=1 d=2"));
    assert_eq!(d.args.get("a"), Some("1"));
    assert_eq!(d.args.get("b"), Some("x=y\tc"));
    assert_eq!(d.args.get("d"), Some("2"));
}

#[test]
fn a_missing_driver_name_is_an_error() {
    let e = error(&plugin("push_notification_driver = :file=x"));
    assert_error(
        &e,
        2,
        "push_notification_driver = :file=x",
        &["missing driver name", "NAME[:ARGS]"],
    );
}

// ---------------------------------------------------------------------------------
// Blocks, comments, quotes
// ---------------------------------------------------------------------------------

#[test]
fn plugin_blocks_inside_protocol_blocks_are_read() {
    let c = parse(
        "protocol imap {\n\
         \x20 mail_plugins = $mail_plugins imap_push\n\
         \x20 plugin {\n\
         \x20   push_notification_driver = dlog\n\
         \x20 }\n\
         }\n\
         protocol lmtp {\n\
         \x20 mail_plugins = $mail_plugins notify push_notification\n\
         }\n\
         plugin {\n\
         \x20 push_notification_driver2 = ox:url=http://x/\n\
         }\n",
    );
    assert_eq!(names(&c), ["dlog", "ox"]);
    assert_eq!(c.drivers[0].location, at(4).unwrap());
    assert_eq!(c.drivers[1].location, at(11).unwrap());
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

#[test]
fn several_plugin_blocks_merge_and_later_values_win_with_a_warning() {
    let c = parse(
        "plugin {\n\
         \x20 push_notification_driver = dlog\n\
         }\n\
         protocol lmtp {\n\
         \x20 plugin {\n\
         \x20   push_notification_driver = ox:url=http://x/\n\
         \x20 }\n\
         }\n",
    );
    assert_eq!(names(&c), ["ox"]);
    assert_eq!(c.drivers[0].location, at(6).unwrap());
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(6));
    assert!(
        c.warnings[0]
            .message
            .contains(&format!("overrides the value set at {CONF}:2")),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn dovecot_settings_mailpush_does_not_use_are_ignored() {
    let c = parse(
        "protocols = imap lmtp\n\
         mail_plugins = $mail_plugins notify push_notification\n\
         mail_location = maildir:~/Maildir\n\
         passdb {\n\
         \x20 driver = pam\n\
         }\n\
         service imap-login {\n\
         \x20 inet_listener imap {\n\
         \x20   port = 143\n\
         \x20 }\n\
         }\n\
         namespace inbox {\n\
         \x20 inbox = yes\n\
         \x20 mailbox Trash {\n\
         \x20   special_use = \\Trash\n\
         \x20 }\n\
         }\n\
         plugin {\n\
         \x20 mail_log_events = delete\n\
         \x20 push_notification_driver = dlog\n\
         }\n",
    );
    assert_eq!(names(&c), ["dlog"]);
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

/// Comments as Dovecot reads them: from the first `#` outside quotes. One that does not
/// follow a space (`path#frag`) is a comment too, with a warning at its line, as
/// Dovecot's "Ambiguous '#' character in line, treating it as comment".
#[test]
fn comments_are_stripped_but_hash_inside_quotes_is_kept() {
    let c = parse(
        "# a comment line\n\
         plugin { # after the brace\n\
         \x20 # indented comment\n\
         \x20 push_notification_driver = dlog # trailing comment\n\
         \x20 push_notification_driver2 = ox:url=http://host/path#frag\n\
         \x20 push_notification_driver3 = \"dlog:x=a #not-a-comment\"\n\
         \x20 push_notification_driver4 = dlog:t=1\t# after a tab\n\
         } # after the closing brace\n",
    );
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.raw.as_deref())
            .collect::<Vec<_>>(),
        [
            None,
            Some("url=http://host/path"),
            Some("x=a #not-a-comment"),
            Some("t=1"),
        ]
    );
    assert_eq!(c.drivers[0].name, "dlog");
    assert_eq!(c.drivers[1].args.get("url"), Some("http://host/path"));
    let w = warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(":5") && w[0].contains("starts a comment"),
        "{w:?}"
    );
}

#[test]
fn quoted_values_are_unquoted() {
    let c = parse(
        "plugin {\n\
         \x20 push_notification_driver = \"dlog:file=/tmp/a b\"\n\
         \x20 push_notification_driver2 = \"ox:url=http://x/\\\"q\\\"\"\n\
         }\n\
         mailpush {\n\
         \x20 listen = \"127.0.0.1:9000\"\n\
         }\n",
    );
    assert_eq!(c.drivers[0].raw.as_deref(), Some("file=/tmp/a b"));
    assert_eq!(c.drivers[0].args.get("file"), Some("/tmp/a"));
    assert_eq!(c.drivers[0].args.get("b"), Some(""));
    assert_eq!(c.drivers[1].raw.as_deref(), Some("url=http://x/\"q\""));
    assert_eq!(
        c.settings.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
}

#[test]

fn single_quoted_values_are_unquoted_like_dovecot() {
    let c = parse(&plugin("push_notification_driver = 'dlog:file=/tmp/a'"));
    assert_eq!(names(&c), ["dlog"]);
    assert_eq!(c.drivers[0].raw.as_deref(), Some("file=/tmp/a"));
}

#[test]
fn settings_without_spaces_around_equals() {
    let c = parse("plugin{\npush_notification_driver=dlog:x=1\n}");
    assert_eq!(names(&c), ["dlog"]);
    assert_eq!(c.drivers[0].args.get("x"), Some("1"));
}

// ---------------------------------------------------------------------------------
// Includes
// ---------------------------------------------------------------------------------

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn includes_resolve_relative_to_the_including_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "plugin {\n  push_notification_driver = dlog\n}\n\
         !include conf.d/90-push.conf\n\
         !include_try missing.conf\n",
    );
    let push = write(
        dir.path(),
        "conf.d/90-push.conf",
        "plugin {\n  push_notification_driver2 = ox:url=http://x/\n}\n!include nested.conf\n",
    );
    // Relative to conf.d/ (the including file), not to the main config's folder.
    write(
        dir.path(),
        "conf.d/nested.conf",
        "mailpush {\n  listen = 127.0.0.1:9999\n}\n",
    );
    write(
        dir.path(),
        "nested.conf",
        "mailpush {\n  listen = 127.0.0.1:1111\n}\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog", "ox"]);
    assert_eq!(c.drivers[0].location.file, main);
    assert_eq!(
        c.drivers[1].location,
        Location {
            file: push,
            line: 2
        }
    );
    assert_eq!(
        c.settings.listen,
        "127.0.0.1:9999".parse::<SocketAddr>().unwrap()
    );
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
    assert_eq!(c.dir(), dir.path());
}

#[test]
fn include_inside_a_plugin_block() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "plugin {\n  !include \"push settings.inc\"\n}\n",
    );
    let inc = write(
        dir.path(),
        "push settings.inc",
        "# included\npush_notification_driver = dlog\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog"]);
    assert_eq!(c.drivers[0].location, Location { file: inc, line: 2 });
}

#[test]
fn include_try_of_a_missing_file_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "!include_try /nonexistent/local.conf\n!include_try local.conf\nplugin {\n  push_notification_driver = dlog\n}\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog"]);
    assert!(c.warnings.is_empty());
}

#[test]
fn a_missing_include_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "plugin {\n  push_notification_driver = dlog\n}\n!include conf.d/missing.conf\n",
    );
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted a missing include");
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0].location,
        Some(Location {
            file: main.clone(),
            line: 4
        })
    );
    assert_eq!(errs[0].text, "!include conf.d/missing.conf");
    assert!(errs[0].message.contains("cannot include"), "{}", errs[0]);
    assert!(
        errs[0]
            .message
            .contains(&dir.path().join("conf.d/missing.conf").display().to_string()),
        "{}",
        errs[0]
    );
    assert!(
        errs[0]
            .to_string()
            .starts_with(&format!("{}:4: cannot include", main.display())),
        "{}",
        errs[0]
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "mailpush.conf", "!include sub.conf\n");
    let sub = write(
        dir.path(),
        "sub.conf",
        "plugin {\n  push_notification_driver dlog\n",
    );
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted");
    };
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let loc = |line| {
        Some(Location {
            file: sub.clone(),
            line,
        })
    };
    assert_eq!(errs[0].location, loc(2));
    assert_eq!(errs[0].text, "push_notification_driver dlog");
    // A block left open at the end of an included file is reported there.
    assert_eq!(errs[1].location, loc(1));
    assert_eq!(errs[1].text, "plugin {");
    assert!(errs[1].message.contains("never closed"));
}

#[test]
fn include_directive_errors() {
    assert_error(
        &error("!include\n"),
        1,
        "!include",
        &["needs a file name", "!include FILE"],
    );
    assert_error(
        &error("!includ foo.conf\n"),
        1,
        "!includ foo.conf",
        &["unknown directive `!includ`"],
    );
}

#[test]
fn an_include_loop_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "mailpush.conf", "!include mailpush.conf\n");
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted an include loop");
    };
    assert!(
        errs.iter().any(|e| e.message.contains("include loop")
            && e.message.contains("remove the `!include` that leads back")
            && e.text == "!include mailpush.conf"),
        "{errs:#?}"
    );
}

#[test]

fn include_globs_like_dovecot() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "dovecot.conf", "!include conf.d/*.conf\n");
    write(
        dir.path(),
        "conf.d/10-mail.conf",
        "mail_location = maildir:~/Maildir\n",
    );
    write(
        dir.path(),
        "conf.d/90-plugin.conf",
        "plugin {\n  push_notification_driver = dlog\n}\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog"]);
}

/// `!include` of a glob that matches nothing is an error (Dovecot's "No matches"): a
/// mistyped `conf.d/*.conf` lost every driver there; `!include_try`'s is fine.
#[test]
fn an_include_glob_matching_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "!include_try conf.d/*.conf
!include cnof.d/*.conf
plugin {\n  push_notification_driver = dlog\n}\n",
    );
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted an include matching nothing");
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].location.as_ref().map(|l| l.line), Some(2));
    assert!(
        errs[0].message.contains("no file matches `cnof.d/*.conf`"),
        "{}",
        errs[0]
    );
}

/// Config files are UTF-8; a byte-order mark is dropped (a block after one was ignored),
/// a Latin-1 comment is passed over, and other bytes that are not UTF-8 are an error at
/// their line, in an included file too (`!include_try` skipped such a file silently).
#[test]
fn config_bytes_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let bom = dir.path().join("bom.conf");
    std::fs::write(
        &bom,
        b"\xEF\xBB\xBFmailpush {\n  listen = 127.0.0.1:9999\n}\nplugin {\n  push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let c = Config::load(&bom).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.settings.listen.port(), 9999);
    let latin1 = dir.path().join("latin1.conf");
    std::fs::write(
        &latin1,
        b"# caf\xe9\nplugin {\n  push_notification_driver = dlog # d\xe9j\xe0\n}\n",
    )
    .unwrap();
    let c = Config::load(&latin1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog"]);
    let inc = dir.path().join("drivers.inc");
    std::fs::write(&inc, b"push_notification_driver2 = dlog:file=caf\xe9.log\n").unwrap();
    for directive in ["!include", "!include_try"] {
        let main = write(
            dir.path(),
            "mailpush.conf",
            &format!(
                "plugin {{\n  push_notification_driver = dlog\n  {directive} drivers.inc\n}}\n"
            ),
        );
        let Err(ConfigErrors(errs)) = Config::load(&main) else {
            panic!("{directive}: accepted a value that is not UTF-8");
        };
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            errs[0].location,
            Some(Location {
                file: inc.clone(),
                line: 1
            })
        );
        assert!(
            errs[0]
                .message
                .contains("not UTF-8 (byte 0xE9 at column 42)"),
            "{}",
            errs[0]
        );
    }
    std::fs::write(
        &latin1,
        b"plugin {\n  push_notification_driver = dlog:file=caf\xe9\n}\n",
    )
    .unwrap();
    let Err(ConfigErrors(errs)) = Config::load(&latin1) else {
        panic!("accepted a value that is not UTF-8");
    };
    assert_eq!(errs[0].location.as_ref().map(|l| l.line), Some(2));
    assert!(!errs[0].message.contains("-c FILE"), "{}", errs[0]);
}

/// A block whose name is a typo away from one mailpush reads is warned about: all of it
/// was ignored without a word (`mailpsuh { }` lost the token and listen address).
#[test]
fn a_block_name_one_typo_away_is_warned_about() {
    let c = Config::parse(
        Path::new("m.conf"),
        "mailpsuh {\n  listen = 0.0.0.0:1\n}\nservice imap {\n}\nprotocols {\n  imap = yes\n}\nplugin {\n  push_notification_driver = dlog\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("m.conf:1: `mailpsuh {` is not a block mailpush reads"),
        "{w:?}"
    );
    assert!(w[0].contains("Did you mean `mailpush`?"), "{w:?}");
}

/// A key file (or /etc/shadow) included by mistake: its lines are not echoed (they were,
/// secret material and all, one error per line), and after three it is given up.
#[test]
fn an_included_file_that_is_not_config_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "mailpush.conf",
        "mailpush {\n  !include client.key\n}\n",
    );
    let key = write(
        dir.path(),
        "client.key",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwSECRET1\nSECRET2SECRET2\nSECRET3\nSECRET4\nSECRET5\n-----END PRIVATE KEY-----\n",
    );
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted a key file");
    };
    let all = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!all.contains("SECRET") && !all.contains("MIIE"), "{all}");
    assert_eq!(errs.len(), 4, "{all}");
    assert!(
        errs.iter()
            .all(|e| e.location.as_ref().is_some_and(|l| l.file == key)),
        "{all}"
    );
    assert!(
        errs[3].message.contains("does not look like a config file"),
        "{all}"
    );
}

/// Dovecot's `key = <FILE` (a value kept out of the main file, such as the ox line with
/// its password): read for the settings mailpush uses, relative to the including file;
/// a Dovecot setting's `<FILE` is not read (mailpush may not, and need not, read
/// `ssl_key`'s file).
#[test]
fn a_value_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file is the value byte for byte: a `#` is no comment; one line break dropped.
    write(
        dir.path(),
        "secret/ox-driver",
        "dlog:file=from#file.log\r\n",
    );
    write(dir.path(), "listen", "127.0.0.1:9998\n");
    let main = write(
        dir.path(),
        "mailpush.conf",
        "ssl_key = </nonexistent/key.pem\nmailpush {\n  listen = <listen\n}\nplugin {\n  push_notification_driver = < secret/ox-driver\n  quota_rule = </nonexistent\n}\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&c), ["dlog"]);
    assert_eq!(c.drivers[0].args.get("file"), Some("from#file.log"));
    assert_eq!(c.settings.listen.port(), 9998);
    // Another plugin's file is not read, nor handed to a Lua script as `<PATH`; with a
    // 2.3 lua driver, that is said where it is written.
    assert_eq!(c.plugin_env.get("quota_rule"), None, "{:?}", c.plugin_env);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    write(dir.path(), "token", "s3cret\n");
    let main = write(
        dir.path(),
        "mailpush.conf",
        "plugin {\n  push_notification_driver = lua:file=p.lua\n  push_notification_token = <token\n  mail_crypt_global_private_key = </nonexistent/key.pem\n  mail_crypt_global_private_key = inline\n  other_key = </nonexistent/other\n}\n",
    );
    let c = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.plugin_env
            .get("push_notification_token")
            .map(String::as_str),
        Some("s3cret")
    );
    // The later setting wins, whichever kind it is.
    assert_eq!(
        c.plugin_env
            .get("mail_crypt_global_private_key")
            .map(String::as_str),
        Some("inline")
    );
    assert_eq!(c.plugin_env.get("other_key"), None);
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("mailpush.conf:6: the file named by other_key (`<FILE`) is not read")
            && w[0].contains("plugin_getenv(\"other_key\") returns nil"),
        "{w:?}"
    );
    let main = write(
        dir.path(),
        "mailpush.conf",
        "plugin {\n  push_notification_driver = <missing\n}\n",
    );
    let Err(ConfigErrors(errs)) = Config::load(&main) else {
        panic!("accepted a missing value file");
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].location.as_ref().map(|l| l.line), Some(2));
    assert!(
        errs[0]
            .message
            .contains("push_notification_driver = <FILE: cannot read"),
        "{}",
        errs[0]
    );
}

/// A block written on one line is refused, as Dovecot refuses it, with how to write it.
#[test]
fn a_block_on_one_line_says_how_to_write_it() {
    let e = error("mailpush { state_dir = st }\n");
    assert_error(
        &e,
        1,
        "mailpush { state_dir = st }",
        &["a block's `{` must end its line (as in Dovecot): write `mailpush {`"],
    );
}

#[test]
fn a_missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.conf");
    let Err(ConfigErrors(errs)) = Config::load(&path) else {
        panic!("loaded a missing file");
    };
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].location, None);
    assert!(
        errs[0].message.contains("cannot read config file"),
        "{}",
        errs[0]
    );
    assert!(errs[0].message.contains(&path.display().to_string()));
    assert!(errs[0].message.contains("-c FILE"), "{}", errs[0]);
}

// ---------------------------------------------------------------------------------
// Syntax errors: file:line and the offending text
// ---------------------------------------------------------------------------------

#[test]
fn unclosed_block() {
    let e = error("# header\nplugin {\n  push_notification_driver = dlog\n");
    assert_error(&e, 2, "plugin {", &["block is never closed", "`}`"]);

    let e = error("protocol imap {\n  plugin {\n  }\n");
    assert_error(&e, 1, "protocol imap {", &["never closed"]);
}

#[test]
fn stray_closing_brace() {
    let e = error("plugin {\n  push_notification_driver = dlog\n}\n}\n");
    assert_error(&e, 4, "}", &["`}` without an open block"]);
}

#[test]
fn line_without_equals() {
    let e = error(&plugin("  push_notification_driver dlog"));
    assert_error(
        &e,
        2,
        "push_notification_driver dlog",
        &["expected `key = value`", "`NAME {`", "`}`", "!include FILE"],
    );
}

#[test]
fn setting_name_with_spaces() {
    let e = error(&plugin("push notification driver = dlog"));
    assert_error(
        &e,
        2,
        "push notification driver = dlog",
        &["`push notification driver` is not a setting name"],
    );
    let e = error(&plugin("= dlog"));
    assert_error(&e, 2, "= dlog", &["is not a setting name"]);
}

#[test]
fn push_setting_outside_a_plugin_block() {
    let e = error("push_notification_driver = dlog\n");
    assert_error(
        &e,
        1,
        "push_notification_driver = dlog",
        &[
            "push_notification_driver must be inside a `plugin { }` block",
            "(as in Dovecot)",
        ],
    );
    // Directly in a protocol block (without plugin { }) is outside too.
    let e = error("protocol lmtp {\n  push_notification_driver2 = dlog\n}\n");
    assert_error(
        &e,
        2,
        "push_notification_driver2 = dlog",
        &["push_notification_driver2 must be inside a `plugin { }` block"],
    );
    // And in a mailpush block.
    let e = error("mailpush {\n  push_notification_driver = dlog\n}\n");
    assert_eq!(e.location, at(2));
}

#[test]
fn protocol_block_needs_a_name() {
    let e = error("protocol {\n}\n");
    assert_error(&e, 1, "protocol {", &["protocol block needs a name"]);
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = "plugin {\n\
                \x20 push_notification_driver dlog\n\
                }\n\
                }\n\
                mailpush {\n\
                \x20 listen = nowhere\n\
                \x20 queue_capacity = 0\n\
                }\n";
    let errs = errors(text);
    assert_eq!(
        errs.iter()
            .map(|e| e.location.as_ref().map(|l| l.line))
            .collect::<Vec<_>>(),
        [Some(2), Some(4), Some(6), Some(7)],
        "{errs:#?}"
    );
    let all = ConfigErrors(errs.clone()).to_string();
    assert_eq!(
        all,
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The mailpush { } block
// ---------------------------------------------------------------------------------

#[test]
fn defaults() {
    let c = parse("");
    assert!(c.drivers.is_empty());
    assert_eq!(warnings(&c).len(), 1, "only: no driver is configured");
    assert_eq!(
        c.settings.listen,
        "127.0.0.1:8025".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.settings.state_dir, PathBuf::from("/var/lib/mailpush"));
    assert_eq!(c.settings.queue_capacity, 1024);
    assert_eq!(c.settings, RuntimeSettings::default());
    assert_eq!(c.path, PathBuf::from(CONF));
    assert_eq!(c.dir(), PathBuf::from("/etc/mailpush"));
    // The documented defaults match.
    let default_of = |key: &str| SETTINGS.iter().find(|(k, _, _)| *k == key).unwrap().1;
    assert_eq!(default_of("listen"), "127.0.0.1:8025");
    assert_eq!(default_of("state_dir"), "/var/lib/mailpush");
    assert_eq!(default_of("queue_capacity"), "1024");
}

#[test]
fn mailpush_block_settings() {
    let c = parse(
        "mailpush {\n\
         \x20 listen = [::1]:9025\n\
         \x20 queue_capacity = 16\n\
         \x20 state_dir = /srv/mailpush\n\
         }\n",
    );
    assert_eq!(
        c.settings.listen,
        "[::1]:9025".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.settings.queue_capacity, 16);
    assert_eq!(c.settings.state_dir, PathBuf::from("/srv/mailpush"));
}

#[test]
fn dead_letter_max_age_is_a_duration_or_0() {
    let of = |v: &str| parse(&format!("mailpush {{\n  dead_letter_max_age = {v}\n}}\n"));
    assert_eq!(
        RuntimeSettings::default().dead_letter_max_age,
        Some(Duration::from_secs(30 * 24 * 3600))
    );
    assert_eq!(
        of("12h").settings.dead_letter_max_age,
        Some(Duration::from_secs(12 * 3600))
    );
    assert_eq!(of("0").settings.dead_letter_max_age, None);
    let default_of = |key: &str| SETTINGS.iter().find(|(k, _, _)| *k == key).unwrap().1;
    assert_eq!(default_of("dead_letter_max_age"), "30d");
}

/// What `check` prints: every key with the value it takes. With nothing set, each is
/// its documented default (the table README.md and `check` show), from nowhere; the
/// `cluster_*` keys only in cluster mode.
#[test]
fn effective_settings_are_the_documented_defaults_unless_set() {
    let c = parse("");
    let shown = c.settings.effective();
    let keys: Vec<&str> = shown.iter().map(|e| e.key).collect();
    let documented: Vec<&str> = SETTINGS
        .iter()
        .map(|(k, _, _)| *k)
        .filter(|k| !k.starts_with("cluster_"))
        .collect();
    assert_eq!(keys, documented);
    for e in &shown {
        let default = SETTINGS.iter().find(|(k, _, _)| *k == e.key).unwrap().1;
        assert_eq!(e.value, default, "{}", e.key);
        assert_eq!(e.at, None, "{}", e.key);
    }

    let c = parse(
        "mailpush {\n\
         \x20 spool_quota = 512M\n\
         \x20 dead_letter_max_age = 0\n\
         \x20 cluster = nats://u:secret@127.0.0.1:4222\n\
         \x20 cluster_lease_msecs = 9000\n\
         \x20 max_body = 1536K\n\
         }\n",
    );
    let shown = c.settings.effective();
    let of = |key: &str| shown.iter().find(|e| e.key == key).unwrap().clone();
    assert_eq!(of("spool_quota").value, "512M");
    assert_eq!(of("spool_quota").at.unwrap().line, 2);
    assert_eq!(of("dead_letter_max_age").value, "0");
    assert_eq!(of("max_body").value, "1536K");
    assert_eq!(of("cluster_lease_msecs").value, "9000");
    assert_eq!(of("cluster_lease_msecs").at.unwrap().line, 5);
    assert_eq!(of("cluster_partitions").value, "32");
    assert_eq!(of("cluster_partitions").at, None);
    let cluster = of("cluster").value;
    assert!(
        !cluster.contains("secret") && cluster.contains("127.0.0.1:4222"),
        "{cluster}"
    );
    assert_eq!(shown.len(), SETTINGS.len(), "every key in cluster mode");
    assert!(shown.iter().all(|e| e.value != "?"), "{shown:?}");
}

#[test]
fn relative_state_dir_resolves_against_the_config_dir() {
    let c = parse("mailpush {\n  state_dir = state\n}\n");
    assert_eq!(c.settings.state_dir, PathBuf::from("/etc/mailpush/state"));
    let c = parse("mailpush {\n  state_dir = ../var/mailpush\n}\n");
    assert_eq!(
        c.settings.state_dir,
        PathBuf::from("/etc/mailpush/../var/mailpush")
    );
}

#[test]
fn unknown_mailpush_key_lists_the_known_keys() {
    let e = error("mailpush {\n  listen_adress = 127.0.0.1:80\n}\n");
    let known = SETTINGS
        .iter()
        .map(|(k, _, _)| *k)
        .collect::<Vec<_>>()
        .join(", ");
    assert_error(
        &e,
        2,
        "listen_adress = 127.0.0.1:80",
        &[
            "unknown mailpush setting `listen_adress`. Known settings: ",
            &format!("Known settings: {known}"),
        ],
    );
    for key in ["state_dir", "listen", "queue_capacity"] {
        assert!(e.message.contains(key), "{e}");
    }
    // A setting named without its prefix names the setting.
    let e = error("mailpush {\n  token_file = /etc/mailpush/token\n}\n");
    assert!(e.message.contains("Did you mean ingest_token_file?"), "{e}");
    // A typo close to a setting names it.
    let e = error("mailpush {\n  queue_capacty = 10\n}\n");
    assert!(
        e.message
            .starts_with("unknown mailpush setting `queue_capacty`. Did you mean queue_capacity? Known settings: "),
        "{e}"
    );
    // A mistyped cluster setting is one too (it was said to need `cluster = …`).
    let e = error("mailpush {\n  cluster_partitons = 16\n}\n");
    assert!(
        e.message.starts_with(
            "unknown mailpush setting `cluster_partitons`. Did you mean cluster_partitions?"
        ),
        "{e}"
    );
}

#[test]
fn bad_listen_address() {
    for bad in ["localhost:8025", "127.0.0.1", "8025", "127.0.0.1:99999"] {
        let e = error(&format!("mailpush {{\n  listen = {bad}\n}}\n"));
        assert_error(
            &e,
            2,
            &format!("listen = {bad}"),
            &["expected IP:PORT", "127.0.0.1:8025"],
        );
    }
}

#[test]
fn bad_queue_capacity() {
    // (The biggest made `send` and `run` panic making the queue.)
    for bad in ["0", "-1", "many", "1.5", "10000001", "2305843009213693952"] {
        let e = error(&format!("mailpush {{\n  queue_capacity = {bad}\n}}\n"));
        assert_error(
            &e,
            2,
            &format!("queue_capacity = {bad}"),
            &["expected a number of transactions from 1 to 10000000"],
        );
    }
}

/// Every other `mailpush { }` value that can be wrong: file:line, the text, what is
/// expected.
#[test]
fn bad_mailpush_block_values() {
    for (line, needle) in [
        (
            "delivery = durable",
            "expected `spool` (at-least-once, default) or `memory`",
        ),
        ("max_body = lots", "expected a size, e.g. `10M`"),
        ("max_body = 0", "expected a size, e.g. `10M`"),
        ("max_inflight = -1", "expected a size, e.g. `64M`"),
        ("spool_quota = huge", "expected a size, e.g. `1G`"),
        (
            "dead_letter_max_age = 10s",
            "expected a duration of at least 1m",
        ),
        (
            "dead_letter_max_age = 30",
            "expected a duration of at least 1m",
        ),
        (
            "shutdown_timeout_msecs = 30s",
            "expected milliseconds, e.g. `30000`",
        ),
        ("tenant_drivers = ", "tenant_drivers needs"),
        ("listen_unix = ", "listen_unix needs a path"),
        ("ingest_token_file = ", "ingest_token_file needs a path"),
        ("handoff_dir = ", "handoff_dir needs a path"),
        (
            "handoff_owners = vmail mail",
            "expected user names or uids separated by commas",
        ),
        (
            "header_timeout_msecs = 0",
            "expected a positive number of milliseconds",
        ),
        (
            "idle_timeout_msecs = 10s",
            "expected a positive number of milliseconds",
        ),
        (
            "max_connections = 0",
            "expected a number of connections from 1 to 1000000",
        ),
        (
            "max_connections_per_peer = 2305843009213693952",
            "expected a number of connections from 1 to 1000000",
        ),
    ] {
        let e = error(&format!("mailpush {{\n  {line}\n}}\n"));
        assert_error(&e, 2, line, &[needle]);
    }
}

/// The hand-off and connection settings, read.
#[test]
fn handoff_and_connection_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailpush.conf");
    std::fs::write(
        &path,
        "mailpush {\n  handoff_dir = handoff\n  handoff_owners = vmail, 5000\n  header_timeout_msecs = 1500\n  idle_timeout_msecs = 2000\n  body_timeout_msecs = 2500\n  max_connections = 10\n  max_connections_per_peer = 3\n}\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let s = &c.settings;
    assert_eq!(
        s.handoff_dir.as_deref(),
        Some(dir.path().join("handoff").as_path())
    );
    assert_eq!(s.handoff_owners, ["vmail", "5000"]);
    let l = &s.connections;
    assert_eq!(
        (l.header_timeout, l.idle_timeout, l.body_timeout),
        (
            std::time::Duration::from_millis(1500),
            std::time::Duration::from_millis(2000),
            std::time::Duration::from_millis(2500)
        )
    );
    assert_eq!((l.max_connections, l.max_connections_per_peer), (10, 3));
}

#[test]
fn a_block_needs_a_name() {
    let e = error("{\n}\n");
    assert_error(
        &e,
        1,
        "{",
        &["a block needs a name: `plugin {`, `mailpush {`, `protocol NAME {`"],
    );
}

#[test]
fn empty_state_dir_is_an_error() {
    let e = error("mailpush {\n  state_dir =\n}\n");
    assert_error(&e, 2, "state_dir = ", &["state_dir needs a path"]);
}

#[test]
fn a_config_without_drivers_says_nothing_will_be_delivered() {
    let c = parse("mailpush {\n  state_dir = /tmp/x\n}\n");
    assert!(c.drivers.is_empty());
    let w = warnings(&c);
    assert!(
        w.iter()
            .any(|w| w.starts_with("no push notification driver is configured")),
        "{w:?}"
    );
    // With a driver, no such warning.
    let c = parse(&plugin("push_notification_driver = dlog"));
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

/// Dovecot ignores a mistyped `push_notifcation_driver` silently; mailpush names the
/// setting probably meant, number included.
#[test]
fn a_mistyped_driver_key_is_named_with_what_was_meant() {
    let c = parse(&plugin(
        "push_notification_driver = dlog\n  push_notificaton_driver2 = dlog\n  push_notifcation_backend = dlog\n  mail_plugins = push_notification\n  Push_Notification_Driver3 = dlog",
    ));
    let w = warnings(&c);
    assert!(
        w.iter().any(|w| w.contains(
            "push_notificaton_driver2 is not a driver setting and is ignored (as Dovecot ignores it). Did you mean push_notification_driver2?"
        )),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("Did you mean push_notification_backend?")),
        "{w:?}"
    );
    // Names are case-sensitive, as in Dovecot: the right name in other case is not read.
    assert!(
        w.iter()
            .any(|w| w.contains("Push_Notification_Driver3 is not a driver setting and is ignored (as Dovecot ignores it). Did you mean push_notification_driver3?")),
        "{w:?}"
    );
    assert_eq!(w.len(), 3, "nothing about mail_plugins: {w:?}");
}

#[test]
fn a_mailpush_setting_given_twice_is_warned_about() {
    let c = parse(
        "mailpush {\n  listen = 127.0.0.1:8025\n}\nmailpush {\n  listen = 127.0.0.1:9025\n}\nplugin {\n  push_notification_driver = dlog\n}\n",
    );
    let w = warnings(&c);
    assert!(
        w.iter().any(
            |w| w.contains("mailpush { listen } overrides the value set at") && w.contains(":2")
        ),
        "{w:?}"
    );
    assert_eq!(
        c.settings.listen,
        "127.0.0.1:9025".parse::<SocketAddr>().unwrap(),
        "the later one wins"
    );
}

/// Tenant handlers alone deliver: no "nothing configured" warning then.
#[test]
fn tenant_drivers_alone_are_something_configured() {
    let c = parse("mailpush {\n  tenant_drivers = /etc/mailpush/tenants\n}\n");
    assert!(c.drivers.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

/// Dovecot's line continuation: a line ending in `\` goes on in the next (one space
/// where the break was); the setting is at its first line, and later line numbers stay
/// right.
#[test]
fn a_backslash_continues_the_line() {
    let c = parse(&plugin(
        "  push_notification_driver = ox:url=http://login:pw@ox.example/notify \\\n      cache_lifetime=60s \\\n      user_from_metadata\n  push_notification_driver2 = dlog",
    ));
    assert_eq!(names(&c), ["ox", "dlog"]);
    let ox = &c.drivers[0];
    assert_eq!(ox.args.get("cache_lifetime"), Some("60s"));
    assert!(
        ox.args.iter().any(|(k, _)| k == "user_from_metadata"),
        "{:?}",
        ox.args
    );
    assert!(ox.args.iter().all(|(k, _)| k != "\\"), "{:?}", ox.args);
    assert_eq!(ox.location, at(2).unwrap());
    assert_eq!(c.drivers[1].location, at(5).unwrap());
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    // A backslash in a comment continues nothing; one before a comment does (comments
    // go first, as in Dovecot).
    let c = parse(&plugin(
        "  push_notification_driver = dlog # see below \\
  push_notification_driver2 = dlog",
    ));
    assert_eq!(numbers(&c), [1, 2]);
    let c = parse(&plugin(
        "  push_notification_driver = ox:url=http://h/ \\ # wrapped\n    user_from_metadata",
    ));
    assert!(c.drivers[0]
        .args
        .iter()
        .any(|(k, _)| k == "user_from_metadata"));
    // An ambiguous `#` on a continued line is warned about at its own line.
    let c = parse(&plugin(
        "  push_notification_driver = dlog:x=1 \\\n    secret=abc#def",
    ));
    assert_eq!(c.drivers[0].args.get("secret"), Some("abc"));
    let w = warnings(&c);
    assert!(w.len() == 1 && w[0].contains(":3"), "{w:?}");
}

/// Every sample config in `examples/` parses: settings, keys and syntax (loading the
/// drivers is `mailpush check`'s, with the files they name).
#[test]
fn the_example_configs_parse() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for file in [
        "mailpush.conf",
        "mailpush-2.4.conf",
        "cluster/mailpush.conf",
    ] {
        let path = examples.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Config::parse(&path, &text) {
            panic!("{file}:\n{e}");
        }
    }
}
