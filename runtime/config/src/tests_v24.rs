//! Dovecot 2.4's `push_notification NAME { }` blocks (dovecot-lua-and-2.4.md §1): the
//! same driver settings as the equivalent 2.3 lines, key resolution, the
//! `push_notification_ox { }` defaults, time and boolean syntax, the errors that tell
//! which Dovecot version a line is written for, `plugin_env`, and 2.3's
//! `push_notification_lua_script_file`.

use super::dovecot24::{parse_bool, parse_time_msecs, v24_lines};
use super::*;

// The config tests' helpers: parse, the errors with their place and Display.
use super::tests::{assert_error, at, error, errors, parse, warnings, CONF};

/// The args as sorted pairs: drivers read them by key, so their order does not matter.
fn sorted(args: &DriverArgs) -> Vec<(String, String)> {
    let mut v: Vec<_> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

use mailpush_core::DriverArgs;

// ---------------------------------------------------------------------------------
// The same drivers as the 2.3 lines
// ---------------------------------------------------------------------------------

const V24: &str = "\
protocol lmtp {
  mail_plugins {
    notify = yes
    push_notification = yes
    mail_lua = yes
    push_notification_lua = yes
  }
}
push_notification ox {
  url = http://login:pass@ox.example:8009/preliminary/http-notify/v1/notify
  cache_ttl = 2mins
  user_from_metadata = yes
  http_client_request_max_attempts = 3
  http_client_request_timeout = 500ms
  ssl_client_ca_file = /etc/ssl/ox-ca.pem
}
push_notification logger {
  driver = dlog
}
push_notification second {
  push_notification_driver = ox
  ox_url = http://ox2.example/notify
  ox_cache_ttl = 60s
  ox_user_from_metadata = no
  breaker_open = 30s
}
protocol imap {
  push_notification script {
    driver = lua
    lua_file = /etc/dovecot/p.lua
    lua_settings {
      mailpush_url = http://127.0.0.1:8025/v1/transactions
      token = \"a b c\"
    }
  }
}
push_notification hook {
  driver = wasm
  file = webhook.wasm
  allow_hosts = hooks.example.net
  retry_max_age = 1h
}
";

const V23: &str = "\
plugin {
  push_notification_driver = ox:url=http://login:pass@ox.example:8009/preliminary/http-notify/v1/notify cache_lifetime=120s user_from_metadata max_retries=2 timeout_msecs=500 ssl_ca_file=/etc/ssl/ox-ca.pem
  push_notification_driver2 = dlog
  push_notification_driver3 = ox:url=http://ox2.example/notify cache_lifetime=60s breaker_open=30s
  push_notification_driver4 = lua:file=/etc/dovecot/p.lua lua_settings.mailpush_url=http://127.0.0.1:8025/v1/transactions dovecot=2.4
  push_notification_driver5 = wasm:file=webhook.wasm allow_hosts=hooks.example.net retry_max_age=1h
}
";

#[test]
fn blocks_give_the_drivers_of_the_equivalent_2_3_lines() {
    let v24 = parse(V24);
    let mut v23 = parse(V23);
    assert!(v24.warnings.is_empty(), "{:?}", warnings(&v24));
    // A value with spaces, which a 2.3 line cannot hold.
    v23.drivers[3].args.set("lua_settings.token", "a b c");
    assert_eq!(v24.drivers.len(), 5);
    for (a, b) in v24.drivers.iter().zip(&v23.drivers) {
        assert_eq!(a.number, b.number);
        assert_eq!(a.name, b.name);
        assert_eq!(sorted(&a.args), sorted(&b.args), "driver {}", a.number);
        assert_eq!(a.syntax, DovecotSyntax::V24);
        assert_eq!(b.syntax, DovecotSyntax::V23);
        assert_eq!(a.raw, None);
    }
    assert_eq!(
        v24.drivers
            .iter()
            .map(|d| d.setting.as_str())
            .collect::<Vec<_>>(),
        [
            "push_notification ox",
            "push_notification logger",
            "push_notification second",
            "push_notification script",
            "push_notification hook"
        ]
    );
    // Each at its block's opening line.
    assert_eq!(
        v24.drivers
            .iter()
            .map(|d| Some(d.location.clone()))
            .collect::<Vec<_>>(),
        [at(9), at(17), at(20), at(28), at(37)]
    );
    // 2.4 configs have no plugin { } settings.
    assert!(v24.plugin_env.is_empty());
}

#[test]
fn a_block_without_driver_uses_its_name() {
    let c = parse("push_notification dlog {\n}\npush_notification OX {\n  ox_url = http://x/\n}\n");
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["dlog", "OX"]
    );
    assert!(c.drivers[0].args.is_empty());
    // `url` resolves as push_notification_ox_url only when the NAME is `ox` (setting
    // names are case-sensitive; driver names are not).
    let e = error("push_notification Ox {\n  url = http://x/\n}\n");
    assert_error(&e, 2, "url = http://x/", &["Did you mean ox_url?"]);
    // An empty driver = is the block's name, as in Dovecot 2.4.
    let c = parse("push_notification dlog {\n  driver =\n}\n");
    assert_eq!(c.drivers[0].name, "dlog");
}

#[test]
fn key_resolution_follows_dovecot_2_4() {
    // push_notification_<NAME>_<key>, push_notification_<key>, <key>: in a block named
    // ox every spelling of the URL works, the later line wins with a warning.
    let c = parse(
        "push_notification ox {\n\
         \x20 push_notification_ox_url = http://a/\n\
         \x20 ox_url = http://b/\n\
         \x20 url = http://c/\n\
         \x20 push_notification_driver = ox\n\
         }\n",
    );
    assert_eq!(c.drivers[0].args.get("url"), Some("http://c/"));
    assert_eq!(c.warnings.len(), 2, "{:?}", warnings(&c));
    assert_eq!(c.warnings[1].location, at(4));
    assert!(
        c.warnings[1]
            .message
            .contains(&format!("overrides url set by `ox_url` at {CONF}:3")),
        "{}",
        c.warnings[1]
    );
    // Anywhere else only the ox_ forms.
    let c = parse(
        "push_notification push {\n  driver = ox\n  push_notification_ox_url = http://a/\n  ox_user_from_metadata = yes\n}\n",
    );
    assert_eq!(c.drivers[0].args.get("url"), Some("http://a/"));
    assert_eq!(c.drivers[0].args.get("user_from_metadata"), Some(""));
}

#[test]
fn mailpush_keys_pass_through_and_others_keep_their_names() {
    let c = parse(
        "push_notification ox {\n\
         \x20 url = http://x/\n\
         \x20 timeout_msecs = 700\n\
         \x20 concurrency = 4\n\
         \x20 hold_max = 30s\n\
         }\n\
         push_notification d {\n\
         \x20 driver = dlog\n\
         \x20 file = /dev/stdout\n\
         \x20 breaker_min = 3\n\
         }\n\
         push_notification w {\n\
         \x20 driver = wasm\n\
         \x20 file = w.wasm\n\
         \x20 anything_at_all = 1\n\
         \x20 allow_private = yes\n\
         }\n",
    );
    assert_eq!(
        sorted(&c.drivers[0].args),
        sorted(&DriverArgs::parse(
            "url=http://x/ timeout_msecs=700 concurrency=4 hold_max=30s"
        ))
    );
    assert_eq!(
        sorted(&c.drivers[1].args),
        sorted(&DriverArgs::parse("file=/dev/stdout breaker_min=3"))
    );
    assert_eq!(
        sorted(&c.drivers[2].args),
        sorted(&DriverArgs::parse(
            "file=w.wasm anything_at_all=1 allow_private=yes"
        ))
    );
}

#[test]
fn lua_settings_and_the_dovecot_marker() {
    let c = parse(
        "push_notification lua {\n\
         \x20 lua_file = /p.lua\n\
         \x20 lua_settings/url = http://h/\n\
         \x20 lua_settings {\n\
         \x20   url = http://later/\n\
         \x20   empty =\n\
         \x20 }\n\
         }\n",
    );
    let d = &c.drivers[0];
    assert_eq!(d.name, "lua");
    assert_eq!(d.args.get("file"), Some("/p.lua"));
    assert_eq!(d.args.get("lua_settings.url"), Some("http://later/"));
    assert_eq!(d.args.get("lua_settings.empty"), Some(""));
    assert_eq!(d.args.get("dovecot"), Some("2.4"));
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    // The lua driver's own mailpush keys pass through in its block.
    let c = parse(
        "push_notification lua {\n\
         \x20 lua_file = /p.lua\n\
         \x20 script_errors = ignore\n\
         \x20 http_failures = ignore\n\
         }\n",
    );
    assert_eq!(c.drivers[0].args.get("script_errors"), Some("ignore"));
    assert_eq!(c.drivers[0].args.get("http_failures"), Some("ignore"));
}

#[test]
fn includes_are_followed_and_blocks_numbered_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-a.conf"),
        "push_notification a {\n  driver = dlog\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/20-b.conf"),
        "protocol lmtp {\n  push_notification b {\n    driver = dlog\n  }\n}\n",
    )
    .unwrap();
    let main = dir.path().join("mailpush.conf");
    let text = "push_notification first {\n  driver = dlog\n}\n!include conf.d/*.conf\npush_notification last {\n  driver = dlog\n}\n";
    let c = Config::parse(&main, text).unwrap();
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| (d.number, d.setting.as_str(), d.location.line))
            .collect::<Vec<_>>(),
        [
            (1, "push_notification first", 1),
            (2, "push_notification a", 1),
            (3, "push_notification b", 2),
            (4, "push_notification last", 5)
        ]
    );
    assert_eq!(
        c.drivers[2].location.file,
        dir.path().join("conf.d/20-b.conf")
    );
}

#[test]
fn blocks_of_the_same_name_are_one_driver() {
    let c = parse(
        "push_notification ox {\n  url = http://a/\n}\n\
         push_notification d {\n  driver = dlog\n}\n\
         protocol lmtp {\n  push_notification ox {\n    cache_ttl = 5s\n  }\n}\n",
    );
    assert_eq!(c.drivers.len(), 2);
    assert_eq!(c.drivers[0].location, at(1).unwrap());
    assert_eq!(
        sorted(&c.drivers[0].args),
        sorted(&DriverArgs::parse("url=http://a/ cache_lifetime=5s"))
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(8));
    assert!(c.warnings[0].message.contains("one driver"));
}

// ---------------------------------------------------------------------------------
// push_notification_ox { } defaults
// ---------------------------------------------------------------------------------

#[test]
fn the_ox_filter_sets_defaults_for_every_ox_block() {
    let c = parse(
        "push_notification_ox {\n\
         \x20 http_client_request_max_attempts = 1\n\
         \x20 http_client_request_timeout = 1min\n\
         }\n\
         push_notification_ox/ox_cache_ttl = 10s\n\
         push_notification ox {\n\
         \x20 url = http://a/\n\
         }\n\
         push_notification two {\n\
         \x20 driver = ox\n\
         \x20 ox_url = http://b/\n\
         \x20 http_client_request_timeout = 2s\n\
         }\n\
         push_notification log {\n\
         \x20 driver = dlog\n\
         }\n",
    );
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
    assert_eq!(
        sorted(&c.drivers[0].args),
        sorted(&DriverArgs::parse(
            "url=http://a/ max_retries=0 timeout_msecs=60000 cache_lifetime=10s"
        ))
    );
    assert_eq!(
        sorted(&c.drivers[1].args),
        sorted(&DriverArgs::parse(
            "url=http://b/ max_retries=0 timeout_msecs=2000 cache_lifetime=10s"
        ))
    );
    assert!(c.drivers[2].args.is_empty());
    // Each argument keeps the line that set it, a default's included, so an error about
    // one (an ox URL that does not parse) can point there.
    let line = |d: usize, arg: &str| {
        c.drivers[d]
            .arg_lines
            .get(arg)
            .map(|l| (l.location.line, l.text.clone()))
    };
    assert_eq!(line(0, "url"), Some((7, "url = http://a/".into())));
    assert_eq!(line(1, "url"), Some((11, "ox_url = http://b/".into())));
    assert_eq!(
        line(1, "timeout_msecs"),
        Some((12, "http_client_request_timeout = 2s".into()))
    );
    assert_eq!(
        line(0, "timeout_msecs"),
        Some((3, "http_client_request_timeout = 1min".into()))
    );
    assert_eq!(
        line(1, "cache_lifetime"),
        Some((5, "push_notification_ox/ox_cache_ttl = 10s".into()))
    );
    assert!(c.drivers[2].arg_lines.is_empty());

    // Without an ox block it applies to nothing.
    let c = parse("push_notification_ox {\n  http_client_request_max_attempts = 2\n}\npush_notification dlog {\n}\n");
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(1));
    assert!(c.warnings[0].message.contains("applies to no block"));

    // `driver` means nothing there; its errors name its lines.
    let errs = errors(
        "push_notification_ox {\n  driver = ox\n  http_client_request_timeout = 5\n}\npush_notification ox {\n  url = http://a/\n}\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_error(
        &errs[0],
        2,
        "driver = ox",
        &["no meaning in push_notification_ox"],
    );
    assert_error(
        &errs[1],
        3,
        "http_client_request_timeout = 5",
        &["Time interval '5' is missing units"],
    );
}

// ---------------------------------------------------------------------------------
// Values: time, booleans, attempts, TLS
// ---------------------------------------------------------------------------------

#[test]
fn time_values_like_dovecot_2_4() {
    for (input, ms) in [
        ("0", 0),
        ("2s", 2000),
        ("2 s", 2000),
        ("2sec", 2000),
        ("2secs", 2000),
        ("2seconds", 2000),
        ("500ms", 500),
        ("500msec", 500),
        ("500msecs", 500),
        ("1001milliseconds", 1001),
        ("1m", 60_000),
        ("1min", 60_000),
        ("2mins", 120_000),
        ("2minutes", 120_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
        ("3S", 3000),
        ("0ms", 0),
    ] {
        assert_eq!(parse_time_msecs(input), Ok(ms), "{input}");
    }
    assert_eq!(
        parse_time_msecs("2"),
        Err("Time interval '2' is missing units (add e.g. 's' for seconds)".into())
    );
    for bad in [
        "",
        "s",
        "-1s",
        " 2s",
        "2x",
        "2ss",
        "2mx",
        "1.5s",
        "2 secs ago",
    ] {
        assert!(parse_time_msecs(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_time_msecs("50d"),
        Err("Time interval is too large: 50d".into())
    );
    assert_eq!(parse_time_msecs("49d"), Ok(49 * 86_400_000));
}

#[test]
fn booleans_like_dovecot_2_4() {
    for yes in ["yes", "YES", "y", "Y", "1"] {
        assert_eq!(parse_bool(yes), Ok(true), "{yes}");
    }
    assert_eq!(parse_bool("No"), Ok(false));
    for bad in ["n", "0", "true", "false", ""] {
        assert!(parse_bool(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_bool("maybe"),
        Err("Invalid boolean value: maybe (use yes or no)".into())
    );
}

#[test]
fn ox_value_errors() {
    let block = |line: &str| format!("push_notification ox {{\n  url = http://x/\n  {line}\n}}\n");
    for (line, needles) in [
        ("ox_cache_ttl = 0", &["Dovecot 2.4 refuses 0", "60s"][..]),
        (
            "cache_ttl = 60",
            &["Time interval '60' is missing units"][..],
        ),
        (
            "http_client_request_timeout = 2",
            &["Time interval '2' is missing units"][..],
        ),
        ("http_client_request_max_attempts = 0", &["at least 1"][..]),
        (
            "http_client_request_max_attempts = two",
            &["at least 1"][..],
        ),
        (
            "ox_user_from_metadata = maybe",
            &["Invalid boolean value: maybe (use yes or no)"][..],
        ),
        (
            "http_client_request_max_attempt = 2",
            &["Did you mean http_client_request_max_attempts?"][..],
        ),
    ] {
        let e = error(&block(line));
        assert_error(&e, 3, line, needles);
    }
    // A TTL below a second is rounded up (mailpush's cache counts seconds).
    let c = parse(&block("ox_cache_ttl = 1500ms"));
    assert_eq!(c.drivers[0].args.get("cache_lifetime"), Some("2s"));
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    // 0 attempts is an error; 1 is no retry.
    let c = parse(&block("http_client_request_max_attempts = 1"));
    assert_eq!(c.drivers[0].args.get("max_retries"), Some("0"));
}

#[test]
fn tls_settings_map_to_ssl_ca_file_or_are_ignored_with_a_warning() {
    let c = parse(
        "push_notification ox {\n\
         \x20 url = https://x/\n\
         \x20 ssl_client_ca_file = /etc/ssl/ca.pem\n\
         \x20 ssl_client_require_valid_cert = yes\n\
         \x20 ssl_client_cert_file = /etc/ssl/me.pem\n\
         \x20 ssl_client_require_valid_cert = no\n\
         \x20 http_client_user_agent = me\n\
         }\n",
    );
    assert_eq!(
        c.drivers[0].args.get("ssl_ca_file"),
        Some("/etc/ssl/ca.pem")
    );
    let w = warnings(&c);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains(":5: ssl_client_cert_file is not supported"),
        "{w:?}"
    );
    assert!(
        w[1].contains(":6: ssl_client_require_valid_cert = no is not supported"),
        "{w:?}"
    );
    assert!(
        w[2].contains(":7: http_client_user_agent is not supported"),
        "{w:?}"
    );
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

#[test]
fn url_outside_a_block_named_ox_says_did_you_mean_ox_url() {
    let e = error("push_notification push {\n  driver = ox\n  url = http://x/\n}\n");
    assert_error(
        &e,
        3,
        "url = http://x/",
        &[
            "unknown setting `url` in `push_notification push { }`",
            "Did you mean ox_url?",
            "only in a block named `ox`",
        ],
    );
    assert_eq!(
        e.to_string(),
        format!("{CONF}:3: {}\n    | url = http://x/", e.message)
    );
}

#[test]
fn unknown_keys_name_the_block_and_the_likely_key() {
    for (text, line, needles) in [
        (
            "push_notification ox {\n  url = http://x/\n  cache_lifetime = 60s\n}\n",
            "cache_lifetime = 60s",
            &["push_notification ox", "Did you mean ox_cache_ttl?", "Dovecot 2.3"][..],
        ),
        (
            "push_notification ox {\n  url = http://x/\n  max_retries = 2\n}\n",
            "max_retries = 2",
            &["Did you mean http_client_request_max_attempts?"][..],
        ),
        (
            "push_notification ox {\n  url = http://x/\n  ox_urll = http://x/\n}\n",
            "ox_urll = http://x/",
            &["Did you mean ox_url?"][..],
        ),
        (
            "push_notification d {\n  driver = dlog\n  fil = /tmp/x\n}\n",
            "fil = /tmp/x",
            &["push_notification d", "a dlog driver", "Did you mean file?"][..],
        ),
        (
            "push_notification lua {\n  lua_file = /p.lua\n  file = /p.lua\n}\n",
            "file = /p.lua",
            &["Did you mean lua_file?"][..],
        ),
        (
            "push_notification lua {\n  lua_file = /p.lua\n  push_notification_lua_file = /p.lua\n}\n",
            "push_notification_lua_file = /p.lua",
            &["Did you mean lua_file?", "documentation"][..],
        ),
        (
            "push_notification lua {\n  lua_file = /p.lua\n  mailpush_url = http://x/\n}\n",
            "mailpush_url = http://x/",
            &["lua_settings { KEY = VALUE }"][..],
        ),
        (
            "push_notification lua {\n  lua_file = /p.lua\n  script_error = ignore\n}\n",
            "script_error = ignore",
            &["Did you mean script_errors?"][..],
        ),
        (
            "push_notification d {\n  driver = dlog\n  script_errors = ignore\n}\n",
            "script_errors = ignore",
            &["a dlog driver"][..],
        ),
        (
            "push_notification lua {\n  lua_file = /p.lua\n  lua_settings = x\n}\n",
            "lua_settings = x",
            &["is a block"][..],
        ),
    ] {
        let e = error(text);
        assert_error(&e, 3, line, needles);
    }
}

#[test]
fn an_empty_lua_file_is_an_error() {
    for text in [
        "push_notification lua {\n  lua_settings {\n    a = b\n  }\n}\n",
        "push_notification lua {\n  lua_file =\n}\n",
    ] {
        let e = error(text);
        assert_error(
            &e,
            1,
            "push_notification lua {",
            &["lua_file setting is empty"],
        );
    }
}

#[test]
fn v23_driver_values_in_a_block_show_the_2_4_lines() {
    let e = error(
        "push_notification ox {\n  push_notification_driver = ox:url=http://x/ max_retries=2 user_from_metadata\n}\n",
    );
    assert_error(
        &e,
        2,
        "push_notification_driver = ox:url=http://x/ max_retries=2 user_from_metadata",
        &[
            "Dovecot 2.3 syntax",
            "`driver = ox`",
            "`ox_url = http://x/`",
            "`http_client_request_max_attempts = 3`",
            "`ox_user_from_metadata = yes`",
        ],
    );
    let e = error("push_notification s {\n  driver = lua:file=/p.lua\n  lua_file = /p.lua\n}\n");
    assert_error(
        &e,
        2,
        "driver = lua:file=/p.lua",
        &["Dovecot 2.3 syntax", "`driver = lua` + `lua_file = /p.lua`"],
    );
    // Numbered 2.3 settings.
    let e =
        error("push_notification d {\n  driver = dlog\n  push_notification_driver2 = dlog\n}\n");
    assert_error(
        &e,
        3,
        "push_notification_driver2 = dlog",
        &["Dovecot 2.3 syntax", "its own `push_notification NAME"],
    );
    assert_eq!(
        v24_lines(
            "ox",
            "url=http://x/ cache_lifetime=30s timeout_msecs=500 ssl_ca_file=/c"
        ),
        [
            "ox_url = http://x/",
            "ox_cache_ttl = 30s",
            "http_client_request_timeout = 500ms",
            "ssl_client_ca_file = /c"
        ]
    );
}

#[test]
fn v24_settings_in_plugin_say_they_are_2_4_syntax() {
    for (line, needles) in [
        (
            "push_notification_ox_url = http://x/",
            &[
                "Dovecot 2.4 syntax",
                "`push_notification_driver = ox:url=http://x/`",
                "`push_notification ox { ox_url = http://x/ }`",
            ][..],
        ),
        (
            "lua_file = /p.lua",
            &[
                "Dovecot 2.4 syntax",
                "`push_notification_driver = lua:file=/p.lua`",
                "`push_notification lua { lua_file = /p.lua }`",
            ][..],
        ),
        (
            "push_notification_lua_file = /p.lua",
            &["documentation", "lua_file"][..],
        ),
        (
            "http_client_request_max_attempts = 3",
            &["max_retries=2"][..],
        ),
        (
            "lua_settings/x = y",
            &["Dovecot 2.4 syntax", "plugin_getenv"][..],
        ),
    ] {
        let e = error(&format!(
            "plugin {{\n  push_notification_driver = dlog\n  {line}\n}}\n"
        ));
        assert_error(&e, 3, line, needles);
    }
    let e =
        error("plugin {\n  push_notification_driver = dlog\n  lua_settings {\n    a = b\n  }\n}\n");
    assert_error(
        &e,
        3,
        "lua_settings {",
        &["Dovecot 2.4 syntax", "plugin_getenv"],
    );
    let e = error("plugin {\n  push_notification ox {\n  }\n}\n");
    assert_error(
        &e,
        2,
        "push_notification ox {",
        &["Dovecot 2.4 syntax", "outside `plugin { }`"],
    );
    // At top level, a 2.4 key says where 2.4 wants it.
    let e = error("push_notification_ox_url = http://x/\n");
    assert_error(
        &e,
        1,
        "push_notification_ox_url = http://x/",
        &["Dovecot 2.4 syntax"],
    );
}

#[test]
fn block_syntax_errors() {
    let e = error("push_notification {\n}\n");
    assert_error(&e, 1, "push_notification {", &["needs a name"]);
    let e = error("push_notification a b {\n}\n");
    assert_error(&e, 1, "push_notification a b {", &["one name"]);
    let e = error("push_notification ox {\n  url = http://x/\n  http_client {\n  }\n}\n");
    assert_error(
        &e,
        3,
        "http_client {",
        &["not supported inside `push_notification ox { }`"],
    );
    let e = error("namespace inbox {\n  push_notification ox {\n  }\n}\n");
    assert_error(&e, 2, "push_notification ox {", &["top level", "protocol"]);
}

#[test]
fn both_syntaxes_in_one_config_is_an_error_naming_both() {
    let e = error(
        "plugin {\n  push_notification_driver = dlog\n}\npush_notification ox {\n  url = http://x/\n}\n",
    );
    assert_error(
        &e,
        4,
        "push_notification ox {",
        &[
            &format!("push_notification_driver at {CONF}:2"),
            &format!("block at {CONF}:4"),
            "Use one syntax",
        ],
    );
    // The ox defaults filter is 2.4 syntax too.
    let e = error("plugin {\n  push_notification_driver = ox:url=http://x/\n}\npush_notification_ox {\n  http_client_request_max_attempts = 2\n}\n");
    assert_error(&e, 4, "push_notification_ox {", &["Use one syntax"]);
    // load_for_check still returns the 2.3 drivers.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.conf");
    std::fs::write(
        &p,
        "plugin {\n  push_notification_driver = dlog\n}\npush_notification ox {\n}\n",
    )
    .unwrap();
    let invalid = Config::load_for_check(&p).unwrap_err();
    assert_eq!(invalid.errors.len(), 1);
    assert_eq!(invalid.drivers.len(), 1);
    assert_eq!(invalid.drivers[0].syntax, DovecotSyntax::V23);
}

#[test]
fn mail_plugins_boollists_are_ignored_silently() {
    let c = parse(
        "mail_plugins {\n  notify = yes\n}\nprotocol lmtp {\n  mail_plugins {\n    push_notification = yes\n    push_notification_lua = yes\n  }\n}\npush_notification dlog {\n}\n",
    );
    assert_eq!(c.drivers.len(), 1);
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
}

// ---------------------------------------------------------------------------------
// plugin_env and push_notification_lua_script_file (2.3)
// ---------------------------------------------------------------------------------

#[test]
fn plugin_env_holds_every_plugin_setting() {
    let c = parse(
        "plugin {\n  push_notification_driver = lua:file=/p.lua\n  mailpush_url = http://a/\n}\nprotocol lmtp {\n  plugin {\n    mailpush_url = http://b/\n    mailpush_token = t\n  }\n}\n",
    );
    assert_eq!(
        c.plugin_env,
        BTreeMap::from([
            ("mailpush_token".to_string(), "t".to_string()),
            ("mailpush_url".to_string(), "http://b/".to_string()),
            (
                "push_notification_driver".to_string(),
                "lua:file=/p.lua".to_string()
            ),
        ])
    );
    // A 2.4 config: empty, and plugin { } settings are said to be unread.
    let c = parse("plugin {\n  mailpush_url = http://a/\n}\npush_notification lua {\n  lua_file = /p.lua\n}\n");
    assert!(c.plugin_env.is_empty());
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(2));
    assert!(c.warnings[0].message.contains("lua_settings"));
}

#[test]
fn lua_script_file_wins_over_file() {
    let c = parse(
        "plugin {\n\
         \x20 push_notification_driver = lua:file=/a.lua x=1\n\
         \x20 push_notification_driver2 = LUA\n\
         \x20 push_notification_driver3 = dlog:file=/tmp/d\n\
         \x20 push_notification_driver4 = lua:file=/s.lua\n\
         \x20 push_notification_lua_script_file = /s.lua\n\
         }\n",
    );
    assert_eq!(c.drivers[0].args.get("file"), Some("/s.lua"));
    assert_eq!(c.drivers[0].args.get("x"), Some("1"));
    assert_eq!(c.drivers[1].args.get("file"), Some("/s.lua"));
    assert_eq!(c.drivers[2].args.get("file"), Some("/tmp/d"));
    assert_eq!(c.drivers[3].args.get("file"), Some("/s.lua"));
    // One warning: driver 1's differing file=.
    assert_eq!(c.warnings.len(), 1, "{:?}", warnings(&c));
    assert_eq!(c.warnings[0].location, at(2));
    assert!(
        c.warnings[0]
            .message
            .contains("file=/a.lua is overridden by push_notification_lua_script_file = /s.lua"),
        "{}",
        c.warnings[0]
    );
    // Without the setting a lua line without file= is left alone (the driver says so).
    let c = parse("plugin {\n  push_notification_driver = lua\n}\n");
    assert!(c.drivers[0].args.is_empty());
    assert_eq!(c.drivers[0].syntax, DovecotSyntax::V23);
}

// ---------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------

#[test]
fn the_2_4_examples_read_as_intended() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let c = Config::load(&examples.join("mailpush-2.4.conf")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
    assert_eq!(
        c.drivers
            .iter()
            .map(|d| (d.number, d.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "dlog"), (2, "ox"), (3, "lua")]
    );
    assert_eq!(
        sorted(&c.drivers[1].args),
        sorted(&DriverArgs::parse(
            "url=http://login:secret@ox.example.net:8009/preliminary/http-notify/v1/notify \
             cache_lifetime=60s user_from_metadata max_retries=1 timeout_msecs=2000 retry_max_age=6h"
        ))
    );
    assert_eq!(c.drivers[2].args.get("dovecot"), Some("2.4"));

    // Dovecot's own 2.4 file reads too (mailpush could be pointed at it).
    let c = Config::load(&examples.join("dovecot/11-mailpush-2.4.conf")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", warnings(&c));
    assert_eq!(c.drivers.len(), 1);
    let d = &c.drivers[0];
    assert_eq!(d.setting, "push_notification mailpush");
    assert_eq!(
        sorted(&d.args),
        sorted(&DriverArgs::parse(
            "file=/etc/dovecot/mailpush-2.4.lua lua_settings.mailpush_handoff_dir=/var/lib/mailpush/handoff dovecot=2.4"
        ))
    );
}

/// A swap of two letters is one typo: `fiel` in a dlog block means `file`, the dlog
/// driver's own setting, before mailpush's general `fuel`.
#[test]
fn a_swapped_pair_of_letters_suggests_the_drivers_own_setting() {
    let e = error("push_notification log {\n  driver = dlog\n  fiel = /tmp/out\n}\n");
    assert_error(&e, 3, "fiel = /tmp/out", &["Did you mean file?"]);
}
