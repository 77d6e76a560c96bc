//! The canonical JSON of transactions: round trips of every event, rejections with
//! exact JSON paths, NDJSON streams with line numbers, and `group()`.

use std::collections::HashSet;

use mailpush_core::event::{
    FlagsClear, FlagsSet, MailboxRef, MailboxRename, MessageRef, NewMessage,
};
use mailpush_core::{
    group, parse_ndjson, parse_stream, parse_stream_bytes, Event, EventName, EventSet, ParseError,
    Record, Transaction,
};

/// One JSON object per event kind, every optional field filled in.
fn sample_event(name: EventName) -> String {
    match name {
        EventName::MessageNew | EventName::MessageAppend => format!(
            r#"{{"name":"{name}","mailbox":"INBOX","uid":42,"uid_validity":1700000000,
            "date":1546336800,"tz":120,"from":"=?utf-8?q?=C3=84?= <alice@barfoo.org>",
            "to":"bob@example.com","subject":"Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=",
            "subject_utf8":"Test päivää","from_address":"alice@barfoo.org",
            "from_display_name":"Ä","to_address":"bob@example.com","to_display_name":"",
            "message_id":"<1@example.com>","snippet":"Hey guys This is only a test...",
            "flags":["\\Recent","\\Seen"],"keywords":["$Label1"],"unseen":2,"messages":5,"recent":1}}"#
        ),
        EventName::MessageExpunge | EventName::MessageRead | EventName::MessageTrash => {
            format!(r#"{{"name":"{name}","mailbox":"INBOX","uid":5,"uid_validity":1700000000}}"#)
        }
        EventName::FlagsSet => format!(
            r#"{{"name":"{name}","mailbox":"INBOX","uid":5,"uid_validity":1700000000,
            "flags":["\\Seen","\\Deleted"],"keywords":["$X","NonJunk"]}}"#
        ),
        EventName::FlagsClear => format!(
            r#"{{"name":"{name}","mailbox":"INBOX","uid":5,"uid_validity":1700000000,
            "flags":["\\Seen"],"keywords":["$X"],"flags_old":["\\Seen","\\Answered"],
            "keywords_old":["$X","$Y"]}}"#
        ),
        EventName::MailboxRename => {
            format!(r#"{{"name":"{name}","mailbox":"Archive/2026","mailbox_old":"Old"}}"#)
        }
        EventName::MailboxCreate
        | EventName::MailboxDelete
        | EventName::MailboxSubscribe
        | EventName::MailboxUnsubscribe => format!(r#"{{"name":"{name}","mailbox":"Lists"}}"#),
    }
}

fn txn_with(event_json: &str) -> String {
    format!(r#"{{"id":"t-1","user":"alice@example.com","events":[{event_json}]}}"#)
}

fn reject(text: &str) -> ParseError {
    match Transaction::from_json(text) {
        Ok(t) => panic!("accepted {text}: {t:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's path and that its message contains every `needles` entry.
fn assert_rejected(text: &str, path: &str, needles: &[&str]) {
    let e = reject(text);
    assert_eq!(e.path, path, "wrong path for {text}: {e}");
    for n in needles {
        assert!(
            e.message.contains(n),
            "message for {text} lacks {n:?}: {}",
            e.message
        );
    }
    // Display is `path: message`.
    assert_eq!(e.to_string(), format!("{}: {}", e.path, e.message));
}

// ---------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------

#[test]
fn every_event_round_trips() {
    for name in EventName::ALL {
        let text = txn_with(&sample_event(name));
        let parsed = Transaction::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].name(), name);

        let json = parsed.to_json();
        let again = Transaction::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, parsed, "{name} changed in a round trip via {json}");
        // Canonical: serialising again gives the same bytes.
        assert_eq!(again.to_json(), json, "{name}");

        // The event object starts with its name, in the transaction and on its own.
        let event_json = parsed.events[0].to_json();
        let prefix = format!(r#"{{"name":"{name}","#);
        assert!(
            event_json.starts_with(&prefix),
            "{name}: key order does not start with name: {event_json}"
        );
        assert!(
            json.contains(&format!(r#""events":[{prefix}"#)),
            "{name}: {json}"
        );
        // And the event on its own parses back into the same event.
        let alone = Transaction::from_json(&txn_with(&event_json)).unwrap();
        assert_eq!(alone.events[0], parsed.events[0]);
    }
}

#[test]
fn round_trip_keeps_every_field_value() {
    let t = Transaction::from_json(&txn_with(&sample_event(EventName::MessageNew))).unwrap();
    let Event::MessageNew(m) = &t.events[0] else {
        panic!("{:?}", t.events[0]);
    };
    assert_eq!(
        *m,
        NewMessage {
            mailbox: "INBOX".into(),
            uid: 42,
            uid_validity: 1_700_000_000,
            date: Some(1_546_336_800),
            tz: Some(120),
            from: Some("=?utf-8?q?=C3=84?= <alice@barfoo.org>".into()),
            to: Some("bob@example.com".into()),
            subject: Some("Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=".into()),
            subject_utf8: Some("Test päivää".into()),
            from_address: Some("alice@barfoo.org".into()),
            from_display_name: Some("Ä".into()),
            to_address: Some("bob@example.com".into()),
            to_display_name: Some("".into()),
            message_id: Some("<1@example.com>".into()),
            snippet: Some("Hey guys This is only a test...".into()),
            flags: Some(vec!["\\Recent".into(), "\\Seen".into()]),
            keywords: Some(vec!["$Label1".into()]),
            unseen: Some(2),
            messages: Some(5),
            recent: Some(1),
        }
    );
    let t = Transaction::from_json(&txn_with(&sample_event(EventName::FlagsClear))).unwrap();
    assert_eq!(
        t.events[0],
        Event::FlagsClear(FlagsClear {
            mailbox: "INBOX".into(),
            uid: 5,
            uid_validity: 1_700_000_000,
            flags: vec!["\\Seen".into()],
            keywords: vec!["$X".into()],
            flags_old: Some(vec!["\\Seen".into(), "\\Answered".into()]),
            keywords_old: Some(vec!["$X".into(), "$Y".into()]),
        })
    );
    let t = Transaction::from_json(&txn_with(&sample_event(EventName::MailboxRename))).unwrap();
    assert_eq!(
        t.events[0],
        Event::MailboxRename(MailboxRename {
            mailbox: "Archive/2026".into(),
            mailbox_old: "Old".into(),
        })
    );
}

#[test]
fn minimal_events_round_trip_and_omit_absent_optionals() {
    let minimal = r#"{"id":"m","user":"u","events":[
        {"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":2},
        {"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":2},
        {"name":"FlagsClear","mailbox":"INBOX","uid":1,"uid_validity":2}]}"#;
    let t = Transaction::from_json(minimal).unwrap();
    assert_eq!(
        t.events[1],
        Event::FlagsSet(FlagsSet {
            mailbox: "INBOX".into(),
            uid: 1,
            uid_validity: 2,
            flags: vec![],
            keywords: vec![],
        })
    );
    let json = t.to_json();
    assert_eq!(
        json,
        concat!(
            r#"{"id":"m","user":"u","events":["#,
            r#"{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":2},"#,
            r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":2,"flags":[],"keywords":[]},"#,
            r#"{"name":"FlagsClear","mailbox":"INBOX","uid":1,"uid_validity":2,"flags":[],"keywords":[]}"#,
            r#"]}"#
        )
    );
    assert_eq!(Transaction::from_json(&json).unwrap(), t);
}

#[test]
fn metadata_round_trips_and_is_omitted_when_empty() {
    let text = r#"{"id":"x","user":"u","metadata":{"/private/vendor/vendor.dovecot/http-notify":"user=u@ox"},"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#;
    let t = Transaction::from_json(text).unwrap();
    assert_eq!(
        t.metadata
            .get("/private/vendor/vendor.dovecot/http-notify")
            .map(String::as_str),
        Some("user=u@ox")
    );
    assert_eq!(Transaction::from_json(&t.to_json()).unwrap(), t);
    let no_meta = Transaction::new(
        "u",
        vec![Event::MailboxCreate(MailboxRef {
            mailbox: "A".into(),
        })],
    );
    assert!(!no_meta.to_json().contains("metadata"));
}

#[test]
fn example_file_parses_and_round_trips() {
    let text = include_str!("../../../examples/events.ndjson");
    let txns = parse_ndjson(text).unwrap();
    assert_eq!(txns.len(), 9);
    assert_eq!(txns[0].id, "demo-1");
    for t in &txns {
        assert_eq!(&Transaction::from_json(&t.to_json()).unwrap(), t);
    }
    // Each example line is already canonical.
    for (line, t) in text.lines().zip(&txns) {
        assert_eq!(t.to_json(), line);
    }
}

// ---------------------------------------------------------------------------------
// Rejections: exact path, helpful message
// ---------------------------------------------------------------------------------

#[test]
fn unknown_event_name_lists_allowed_names() {
    let e = reject(&txn_with(r#"{"name":"MessageNu","mailbox":"INBOX"}"#));
    assert_eq!(e.path, "$.events[0].name");
    assert!(e.message.contains("`MessageNu`"), "{e}");
    for name in EventName::ALL {
        assert!(e.message.contains(name.as_str()), "{name} missing: {e}");
    }
    // Names are case-sensitive, like Dovecot's lookups.
    assert_rejected(
        &txn_with(r#"{"name":"messagenew","mailbox":"INBOX","uid":1,"uid_validity":1}"#),
        "$.events[0].name",
        &["messagenew", "MessageNew"],
    );
    // RFC 5423 spells it MailboxUnSubscribe; Dovecot does not.
    assert_rejected(
        &txn_with(r#"{"name":"MailboxUnSubscribe","mailbox":"INBOX"}"#),
        "$.events[0].name",
        &["MailboxUnsubscribe"],
    );
}

#[test]
fn missing_or_mistyped_event_name() {
    assert_rejected(
        &txn_with(r#"{"mailbox":"INBOX"}"#),
        "$.events[0]",
        &["missing field `name`", "MessageNew", "MailboxRename"],
    );
    assert_rejected(
        &txn_with(r#"{"name":7,"mailbox":"INBOX"}"#),
        "$.events[0].name",
        &["expected a string", "number"],
    );
    assert_rejected(
        r#"{"user":"u","events":["MessageNew"]}"#,
        "$.events[0]",
        &["expected an event object", "string"],
    );
}

#[test]
fn unknown_event_field() {
    assert_rejected(
        &txn_with(r#"{"name":"MessageRead","mailbox":"INBOX","uid":1,"uid_validity":1,"foo":1}"#),
        "$.events[0].foo",
        &["unknown field", "MessageRead", "mailbox, uid, uid_validity"],
    );
    // A field of another event kind is unknown here too.
    assert_rejected(
        &txn_with(r#"{"name":"MailboxCreate","mailbox":"A","uid":1}"#),
        "$.events[0].uid",
        &["unknown field for MailboxCreate", "allowed: name, mailbox"],
    );
    // The index is the event's own.
    let text = format!(
        r#"{{"user":"u","events":[{},{{"name":"MailboxDelete","mailbox":"A","foo":1}}]}}"#,
        sample_event(EventName::MessageNew)
    );
    assert_rejected(&text, "$.events[1].foo", &["MailboxDelete"]);
}

/// Every event kind, every field: an unknown field, a value of the wrong type and a
/// missing required field are each rejected naming the event and the JSON path.
#[test]
fn every_event_rejects_unknown_fields_wrong_types_and_missing_required_fields() {
    for name in EventName::ALL {
        let sample: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&sample_event(name)).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut e = sample.clone();
            f(&mut e);
            txn_with(&serde_json::Value::Object(e).to_string())
        };
        assert_rejected(
            &with(&|e| {
                e.insert("bogus".into(), 1.into());
            }),
            "$.events[0].bogus",
            &["unknown field", name.as_str()],
        );
        for field in sample.keys().filter(|k| *k != "name") {
            // An object is the wrong type for every field (strings, numbers, lists).
            let text = with(&|e| {
                e.insert(field.clone(), serde_json::json!({"x": 1}));
            });
            let err = reject(&text);
            assert_eq!(
                err.path,
                format!("$.events[0].{field}"),
                "{name} {field}: {err}"
            );
            let required = matches!(field.as_str(), "mailbox" | "uid" | "uid_validity")
                || (name == EventName::MailboxRename && field == "mailbox_old");
            if required {
                assert_rejected(
                    &with(&|e| {
                        e.remove(field);
                    }),
                    "$.events[0]",
                    &[&format!("missing field `{field}`"), name.as_str()],
                );
            } else {
                // Optional fields may be left out.
                let text = with(&|e| {
                    e.remove(field);
                });
                assert!(
                    Transaction::from_json(&text).is_ok(),
                    "{name} without {field}"
                );
            }
        }
    }
}

#[test]
fn unknown_transaction_field() {
    assert_rejected(
        r#"{"user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}],"evnts":[]}"#,
        "$.evnts",
        &["unknown field", "id, user, events, metadata"],
    );
}

#[test]
fn wrong_types_name_the_field() {
    assert_rejected(
        &txn_with(r#"{"name":"MessageNew","mailbox":"INBOX","uid":"5","uid_validity":1}"#),
        "$.events[0].uid",
        &["string", "u32"],
    );
    assert_rejected(
        &txn_with(r#"{"name":"MessageExpunge","mailbox":"INBOX","uid":1,"uid_validity":-1}"#),
        "$.events[0].uid_validity",
        &["-1"],
    );
    assert_rejected(
        &txn_with(r#"{"name":"MailboxCreate","mailbox":5}"#),
        "$.events[0].mailbox",
        &["expected a string"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":1,"subject":["x"]}"#,
        ),
        "$.events[0].subject",
        &["sequence", "string"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":"\\Seen"}"#,
        ),
        "$.events[0].flags",
        &["sequence"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["\\Seen",3]}"#,
        ),
        "$.events[0].flags[1]",
        &["integer", "string"],
    );
    assert_rejected(
        r#"{"user":5,"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$.user",
        &["expected a string, found a number"],
    );
    assert_rejected(
        r#"{"id":1,"user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$.id",
        &["expected a string, found a number"],
    );
    assert_rejected(
        r#"{"user":"u","events":{"name":"MailboxCreate","mailbox":"A"}}"#,
        "$.events",
        &["expected an array of events, found an object"],
    );
}

#[test]
fn message_events_need_uid_and_uid_validity() {
    for name in [
        EventName::MessageNew,
        EventName::MessageAppend,
        EventName::MessageExpunge,
        EventName::MessageRead,
        EventName::MessageTrash,
        EventName::FlagsSet,
        EventName::FlagsClear,
    ] {
        assert_rejected(
            &txn_with(&format!(
                r#"{{"name":"{name}","mailbox":"INBOX","uid_validity":1}}"#
            )),
            "$.events[0]",
            &["missing field `uid`", name.as_str()],
        );
        assert_rejected(
            &txn_with(&format!(r#"{{"name":"{name}","mailbox":"INBOX","uid":1}}"#)),
            "$.events[0]",
            &["missing field `uid_validity`", name.as_str()],
        );
        assert_rejected(
            &txn_with(&format!(r#"{{"name":"{name}","uid":1,"uid_validity":1}}"#)),
            "$.events[0]",
            &["missing field `mailbox`", name.as_str()],
        );
    }
}

#[test]
fn mailbox_events_need_mailbox_and_rename_needs_mailbox_old() {
    assert_rejected(
        &txn_with(r#"{"name":"MailboxRename","mailbox":"Bar"}"#),
        "$.events[0]",
        &["missing field `mailbox_old`", "MailboxRename"],
    );
    assert_rejected(
        &txn_with(r#"{"name":"MailboxRename","mailbox_old":"Foo"}"#),
        "$.events[0]",
        &["missing field `mailbox`"],
    );
    assert_rejected(
        &txn_with(r#"{"name":"MailboxSubscribe"}"#),
        "$.events[0]",
        &["missing field `mailbox`", "MailboxSubscribe"],
    );
}

#[test]
fn flags_must_be_system_flags() {
    let e = reject(&txn_with(
        r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["\\Seen","$Junk"]}"#,
    ));
    assert_eq!(e.path, "$.events[0].flags[1]");
    assert!(e.message.contains("\"$Junk\""), "{e}");
    assert!(e.message.contains("not an IMAP system flag"), "{e}");
    assert!(e.message.contains("\\Answered"), "{e}");
    assert!(e.message.contains("keywords"), "{e}");
    // System flags are matched exactly (case-sensitive, with the backslash).
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsClear","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["Seen"]}"#,
        ),
        "$.events[0].flags[0]",
        &["\"Seen\""],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsClear","mailbox":"INBOX","uid":1,"uid_validity":1,"flags_old":["\\Seen","\\seen"]}"#,
        ),
        "$.events[0].flags_old[1]",
        &["not an IMAP system flag"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["\\Recent","\\Important"]}"#,
        ),
        "$.events[0].flags[1]",
        &["\\\\Important"],
    );
}

#[test]
fn keywords_must_be_keywords() {
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"keywords":["$X","\\Seen"]}"#,
        ),
        "$.events[0].keywords[1]",
        &["not an IMAP keyword", "leading backslash"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"keywords":["two words"]}"#,
        ),
        "$.events[0].keywords[0]",
        &["\"two words\"", "no spaces"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"FlagsClear","mailbox":"INBOX","uid":1,"uid_validity":1,"keywords_old":[""]}"#,
        ),
        "$.events[0].keywords_old[0]",
        &["non-empty"],
    );
    assert_rejected(
        &txn_with(
            r#"{"name":"MessageAppend","mailbox":"INBOX","uid":1,"uid_validity":1,"keywords":["a\tb"]}"#,
        ),
        "$.events[0].keywords[0]",
        &["not an IMAP keyword"],
    );
}

#[test]
fn transaction_level_rejections() {
    assert_rejected(
        r#"{"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$",
        &["missing field `user`"],
    );
    assert_rejected(
        r#"{"user":"","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$.user",
        &["must not be empty"],
    );
    assert_rejected(
        r#"{"user":"u","events":[]}"#,
        "$.events",
        &["at least one event"],
    );
    assert_rejected(r#"{"user":"u"}"#, "$", &["missing field `events`"]);
    assert_rejected(
        r#"{"id":"","user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$.id",
        &["must not be empty"],
    );
}

#[test]
fn metadata_values_must_be_strings() {
    assert_rejected(
        r#"{"user":"u","metadata":{"ok":"v","/private/x":1},"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        r#"$.metadata["/private/x"]"#,
        &["expected a string value, found a number"],
    );
    assert_rejected(
        r#"{"user":"u","metadata":{"k":null},"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        r#"$.metadata["k"]"#,
        &["found null"],
    );
    assert_rejected(
        r#"{"user":"u","metadata":["k"],"events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
        "$.metadata",
        &["expected an object", "found an array"],
    );
}

#[test]
fn top_level_must_be_an_object() {
    assert_rejected(
        "[]",
        "$",
        &["expected a transaction object", "found an array"],
    );
    assert_rejected("\"hello\"", "$", &["found a string"]);
    assert_rejected("null", "$", &["found null"]);
    assert_rejected("42", "$", &["found a number"]);
}

#[test]
fn invalid_json_syntax() {
    let e = reject(r#"{"user":"u","events":[}"#);
    assert_eq!(e.path, "$");
    assert!(
        e.message.starts_with("invalid JSON at line 1 column "),
        "{e}"
    );
    // serde_json's own " at line … column …" suffix is not repeated.
    assert_eq!(e.message.matches(" at line ").count(), 1, "{e}");

    let e = reject("{\n  \"user\": \"u\",\n  \"events\": [,]\n}");
    assert_eq!(e.path, "$");
    assert!(
        e.message.starts_with("invalid JSON at line 3 column "),
        "{e}"
    );

    let e = reject("");
    assert_eq!(e.path, "$");
    assert!(e.message.contains("invalid JSON"), "{e}");
    assert!(e.message.contains("EOF"), "{e}");

    let e = reject(r#"{"user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]} trailing"#);
    assert_eq!(e.path, "$");
    assert!(e.message.contains("trailing characters"), "{e}");
}

// ---------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------

#[test]
fn id_is_assigned_when_absent_and_kept_when_given() {
    let text = r#"{"user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#;
    let ids: Vec<String> = (0..50)
        .map(|_| Transaction::from_json(text).unwrap().id)
        .collect();
    assert!(ids.iter().all(|id| !id.is_empty()));
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "{ids:?}"
    );

    let kept = Transaction::from_json(
        r#"{"id":"my-id-1","user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#,
    )
    .unwrap();
    assert_eq!(kept.id, "my-id-1");

    // Through a stream too, and the assigned id survives a round trip.
    let stream = format!("{text}\n{text}\n");
    let txns = parse_ndjson(&stream).unwrap();
    assert_eq!(txns.len(), 2);
    assert!(!txns[0].id.is_empty());
    assert_ne!(txns[0].id, txns[1].id);
    assert_eq!(
        Transaction::from_json(&txns[0].to_json()).unwrap().id,
        txns[0].id
    );

    let new = Transaction::new("u", vec![]);
    assert!(!new.id.is_empty());
    assert_ne!(new.id, Transaction::new("u", vec![]).id);
}

// ---------------------------------------------------------------------------------
// NDJSON / streams
// ---------------------------------------------------------------------------------

const GOOD_A: &str = r#"{"id":"a","user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]}"#;
const GOOD_B: &str = r#"{"id":"b","user":"u","events":[{"name":"MailboxDelete","mailbox":"B"}]}"#;

fn lines_of(
    results: &[Result<Transaction, mailpush_core::LineError>],
) -> Vec<Result<String, usize>> {
    results
        .iter()
        .map(|r| match r {
            Ok(t) => Ok(t.id.clone()),
            Err(e) => Err(e.line),
        })
        .collect()
}

#[test]
fn stream_reports_one_based_lines_with_blank_lines() {
    let text = format!(
        "{GOOD_A}\n\n\n{}\n{GOOD_B}\n",
        r#"{"user":"u","events":[]}"#
    );
    let results = parse_stream(&text);
    assert_eq!(
        lines_of(&results),
        vec![Ok("a".into()), Err(4), Ok("b".into())]
    );
    let Err(e) = &results[1] else { unreachable!() };
    assert_eq!(e.error.path, "$.events");
    assert_eq!(
        e.to_string(),
        "line 4: $.events: a transaction needs at least one event"
    );
}

#[test]
fn stream_first_line_error_is_line_1() {
    let text = format!("{}\n{GOOD_A}", r#"{"user":"u","events":[{"name":"Nope"}]}"#);
    let results = parse_stream(&text);
    assert_eq!(lines_of(&results), vec![Err(1), Ok("a".into())]);
    let Err(e) = &results[0] else { unreachable!() };
    assert_eq!(e.error.path, "$.events[0].name");
}

#[test]
fn stream_pretty_printed_transaction_then_a_bad_one() {
    let text = format!(
        "{GOOD_A}\n\
         \n\
         {{\n\
         \x20 \"id\": \"pretty\",\n\
         \x20 \"user\": \"u\",\n\
         \x20 \"events\": [\n\
         \x20   {{\"name\": \"MailboxRename\", \"mailbox\": \"Bar\", \"mailbox_old\": \"Foo\"}}\n\
         \x20 ]\n\
         }}\n\
         {{\n\
         \x20 \"user\": \"u\",\n\
         \x20 \"events\": [{{\"name\": \"MailboxCreate\", \"mailbox\": \"A\", \"foo\": 1}}]\n\
         }}\n\
         {GOOD_B}\n"
    );
    // Lines: 1 GOOD_A, 2 blank, 3–9 pretty, 10–13 bad, 14 GOOD_B.
    assert_eq!(text.lines().nth(9), Some("{"));
    let results = parse_stream(&text);
    assert_eq!(
        lines_of(&results),
        vec![Ok("a".into()), Ok("pretty".into()), Err(10), Ok("b".into())]
    );
    let Err(e) = &results[2] else { unreachable!() };
    assert_eq!(e.error.path, "$.events[0].foo");
    match parse_ndjson(&text) {
        Err(e) => assert_eq!(e.line, 10),
        Ok(t) => panic!("accepted: {t:?}"),
    }
}

#[test]
fn stream_resumes_after_syntax_error() {
    let text = format!("{GOOD_A}\n{{\"user\": \"u\", events\n\n{GOOD_B}\n");
    let results = parse_stream(&text);
    assert_eq!(
        lines_of(&results),
        vec![Ok("a".into()), Err(2), Ok("b".into())]
    );
    let Err(e) = &results[1] else { unreachable!() };
    assert_eq!(e.error.path, "$");
    assert!(
        e.error
            .message
            .starts_with("invalid JSON at line 2 column "),
        "{e}"
    );

    // Two syntax errors in a row, each reported on its own line.
    let text = format!("not json\n{{]\n{GOOD_A}\n");
    assert_eq!(
        lines_of(&parse_stream(&text)),
        vec![Err(1), Err(2), Ok("a".into())]
    );

    // A syntax error on the last line, without a trailing newline.
    let text = format!("{GOOD_A}\n{GOOD_B}\n{{\"user\":");
    assert_eq!(
        lines_of(&parse_stream(&text)),
        vec![Ok("a".into()), Ok("b".into()), Err(3)]
    );
}

#[test]
fn stream_syntax_error_inside_a_pretty_printed_transaction() {
    // The error is reported on the line the transaction starts on (2), not the line
    // of the bad token (4); parsing resumes after the object's closing `}` (line 5),
    // so its leftover lines produce no second error, and still finds GOOD_B.
    let text = format!("{GOOD_A}\n{{\n  \"user\": \"u\",\n  \"events\": [,]\n}}\n{GOOD_B}\n");
    let results = lines_of(&parse_stream(&text));
    assert_eq!(results, vec![Ok("a".into()), Err(2), Ok("b".into())]);
    let Err(e) = &parse_stream(&text)[1] else {
        unreachable!()
    };
    assert!(
        e.error
            .message
            .starts_with("invalid JSON at line 4 column "),
        "{e}"
    );
}

#[test]
fn stream_resumes_after_the_end_of_a_broken_multi_line_object() {
    // A comma missing after line 3 (found on line 4); the strings hold brackets,
    // quotes and escapes that must not count. One error, for the object's first line.
    let text = format!(
        "{GOOD_A}\n\
         {{\n\
         \x20 \"user\": \"u\"\n\
         \x20 \"events\": [\n\
         \x20   {{\"name\": \"MailboxCreate\", \"mailbox\": \"a }} ] {{ \\\" [\\\\\"}}\n\
         \x20 ]\n\
         }}\n\
         {GOOD_B}\n"
    );
    assert_eq!(
        text.lines().nth(4),
        Some(r#"    {"name": "MailboxCreate", "mailbox": "a } ] { \" [\\"}"#)
    );
    let results = parse_stream(&text);
    assert_eq!(
        lines_of(&results),
        vec![Ok("a".into()), Err(2), Ok("b".into())]
    );
    let Err(e) = &results[1] else { unreachable!() };
    assert!(
        e.error
            .message
            .starts_with("invalid JSON at line 4 column "),
        "{e}"
    );

    // Truncated (the closing `}` is missing): the next object opening at the same
    // indentation is the next transaction, pretty-printed or not.
    let text = format!(
        "{GOOD_A}\n\
         {{\n\
         \x20 \"user\": \"u\",\n\
         \x20 \"events\": [{{\"name\": \"MailboxCreate\", \"mailbox\": \"A\"}}]\n\
         {{\n\
         \x20 \"id\": \"c\",\n\
         \x20 \"user\": \"u\",\n\
         \x20 \"events\": [{{\"name\": \"MailboxDelete\", \"mailbox\": \"C\"}}]\n\
         }}\n\
         {GOOD_B}\n"
    );
    assert_eq!(
        lines_of(&parse_stream(&text)),
        vec![Ok("a".into()), Err(2), Ok("c".into()), Ok("b".into())]
    );

    // Indented objects (e.g. cut from a larger document) resume the same way.
    let text = format!("  {{\n    \"user\": \"u\",\n    \"events\": [,]\n  }}\n  {GOOD_A}\n");
    assert_eq!(lines_of(&parse_stream(&text)), vec![Err(1), Ok("a".into())]);

    // NDJSON stays one transaction per line: a broken line is one error and the next
    // line is parsed, also when the broken line lacks its closing brace.
    let missing_brace = r#"{"user":"u","events":[{"name":"MailboxCreate","mailbox":"A"}]"#;
    let text = format!(
        "{GOOD_A}\n{missing_brace}\n{GOOD_B}\n{{\"user\":\"u\",,}}\n{{]\nnot json\n{GOOD_A}\n"
    );
    assert_eq!(
        lines_of(&parse_stream(&text)),
        vec![
            Ok("a".into()),
            Err(2),
            Ok("b".into()),
            Err(4),
            Err(5),
            Err(6),
            Ok("a".into())
        ]
    );
}

#[test]
fn stream_handles_crlf_and_empty_input() {
    assert!(parse_stream("").is_empty());
    assert!(parse_stream("\n\n  \n").is_empty());
    assert!(parse_ndjson("\n").unwrap().is_empty());
    let text = format!("{GOOD_A}\r\n\r\n{}\r\n", r#"{"user":"u"}"#);
    assert_eq!(lines_of(&parse_stream(&text)), vec![Ok("a".into()), Err(3)]);
}

#[test]
fn ndjson_is_all_or_nothing_and_names_the_first_bad_line() {
    let good = format!("{GOOD_A}\n{GOOD_B}\n");
    let txns = parse_ndjson(&good).unwrap();
    assert_eq!(
        txns.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let bad = format!("{GOOD_A}\n\n{}\n{GOOD_B}\n{{bad\n", r#"{"events":[]}"#);
    let e = parse_ndjson(&bad).unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(e.error.path, "$");
}

// ---------------------------------------------------------------------------------
// group()
// ---------------------------------------------------------------------------------

fn msg(uid: u32) -> MessageRef {
    MessageRef {
        mailbox: "INBOX".into(),
        uid,
        uid_validity: 7,
    }
}

fn flags_set(mailbox: &str, uid: u32, flags: &[&str]) -> Event {
    Event::FlagsSet(FlagsSet {
        mailbox: mailbox.into(),
        uid,
        uid_validity: 7,
        flags: flags.iter().map(|s| s.to_string()).collect(),
        keywords: vec![],
    })
}

fn flags_clear(uid: u32) -> Event {
    Event::FlagsClear(FlagsClear {
        mailbox: "INBOX".into(),
        uid,
        uid_validity: 7,
        ..Default::default()
    })
}

fn mbox(mailbox: &str) -> MailboxRef {
    MailboxRef {
        mailbox: mailbox.into(),
    }
}

/// A compact view of records: `("INBOX", Some(5), [names])` or `("A", None, [names])`.
fn shape(records: &[Record<'_>]) -> Vec<(String, Option<u32>, Vec<EventName>)> {
    records
        .iter()
        .map(|r| match r {
            Record::Message(m) => (
                m.mailbox.to_string(),
                Some(m.uid),
                m.events.iter().map(|e| e.name()).collect(),
            ),
            Record::Mailbox(m) => (
                m.mailbox.to_string(),
                None,
                m.events.iter().map(|e| e.name()).collect(),
            ),
        })
        .collect()
}

#[test]
fn group_puts_one_messages_events_in_one_record() {
    use EventName::*;
    let txn = Transaction::new(
        "u",
        vec![
            flags_clear(5),
            flags_set("INBOX", 6, &["\\Deleted"]),
            flags_set("INBOX", 5, &["\\Seen"]),
            Event::MessageTrash(msg(6)),
            Event::MessageRead(msg(5)),
            Event::MessageExpunge(msg(6)),
        ],
    );
    let records = group(&txn, EventSet::all());
    assert_eq!(
        shape(&records),
        vec![
            (
                "INBOX".into(),
                Some(5),
                vec![FlagsClear, FlagsSet, MessageRead]
            ),
            (
                "INBOX".into(),
                Some(6),
                vec![FlagsSet, MessageTrash, MessageExpunge]
            ),
        ]
    );
    let Record::Message(m) = &records[0] else {
        panic!()
    };
    assert_eq!((m.uid, m.uid_validity), (5, 7));
    // The records borrow the transaction's events themselves, in order.
    assert!(std::ptr::eq(m.events[0], &txn.events[0]));
    assert!(std::ptr::eq(m.events[1], &txn.events[2]));
    assert!(std::ptr::eq(m.events[2], &txn.events[4]));
}

#[test]
fn group_keeps_mailbox_events_per_mailbox_in_first_appearance_order() {
    use EventName::*;
    let txn = Transaction::new(
        "u",
        vec![
            Event::MailboxCreate(mbox("B")),
            Event::MailboxCreate(mbox("A")),
            Event::MailboxSubscribe(mbox("B")),
            Event::MailboxRename(mailpush_core::event::MailboxRename {
                mailbox: "C".into(),
                mailbox_old: "A".into(),
            }),
            Event::MailboxSubscribe(mbox("A")),
            Event::MailboxUnsubscribe(mbox("B")),
            Event::MailboxDelete(mbox("C")),
        ],
    );
    assert_eq!(
        shape(&group(&txn, EventSet::all())),
        vec![
            (
                "B".into(),
                None,
                vec![MailboxCreate, MailboxSubscribe, MailboxUnsubscribe]
            ),
            ("A".into(), None, vec![MailboxCreate, MailboxSubscribe]),
            // A rename belongs to the new name.
            ("C".into(), None, vec![MailboxRename, MailboxDelete]),
        ]
    );
}

#[test]
fn group_separates_mailbox_records_message_records_and_mailboxes() {
    use EventName::*;
    let txn = Transaction::new(
        "u",
        vec![
            Event::MessageNew(NewMessage {
                mailbox: "INBOX".into(),
                uid: 1,
                uid_validity: 7,
                ..Default::default()
            }),
            Event::MailboxSubscribe(mbox("INBOX")),
            flags_set("Sent", 1, &["\\Seen"]),
            flags_set("INBOX", 1, &["\\Seen"]),
            Event::MessageRead(MessageRef {
                mailbox: "Sent".into(),
                uid: 1,
                uid_validity: 9,
            }),
        ],
    );
    assert_eq!(
        shape(&group(&txn, EventSet::all())),
        vec![
            ("INBOX".into(), Some(1), vec![MessageNew, FlagsSet]),
            ("INBOX".into(), None, vec![MailboxSubscribe]),
            ("Sent".into(), Some(1), vec![FlagsSet, MessageRead]),
        ]
    );
}

#[test]
fn group_filters_unwanted_events_and_drops_empty_records() {
    use EventName::*;
    let txn = Transaction::new(
        "u",
        vec![
            flags_clear(5),
            Event::MailboxCreate(mbox("A")),
            flags_set("INBOX", 5, &["\\Seen"]),
            Event::MessageRead(msg(5)),
            flags_clear(6),
            Event::MessageNew(NewMessage {
                mailbox: "INBOX".into(),
                uid: 7,
                uid_validity: 7,
                ..Default::default()
            }),
        ],
    );
    let wanted = EventSet::empty().with(MessageRead).with(MessageNew);
    // uid 5's record starts at its first *wanted* event; uid 6 and mailbox A vanish.
    assert_eq!(
        shape(&group(&txn, wanted)),
        vec![
            ("INBOX".into(), Some(5), vec![MessageRead]),
            ("INBOX".into(), Some(7), vec![MessageNew]),
        ]
    );
    assert!(group(&txn, EventSet::empty()).is_empty());
    let only_mailbox: EventSet = [MailboxCreate].into_iter().collect();
    assert_eq!(
        shape(&group(&txn, only_mailbox)),
        vec![("A".into(), None, vec![MailboxCreate])]
    );
}

#[test]
fn group_orders_message_records_by_uid_per_mailbox() {
    use EventName::*;
    let txn = Transaction::new(
        "u",
        vec![
            flags_clear(9),
            flags_set("INBOX", 3, &["\\Seen"]),
            flags_set("INBOX", 9, &["\\Seen"]),
        ],
    );
    // Message records come in ascending uid, as Dovecot visits them (by ascending
    // sequence number), whatever the order of their events.
    assert_eq!(
        shape(&group(&txn, EventSet::all()))
            .iter()
            .map(|r| r.1)
            .collect::<Vec<_>>(),
        [Some(3), Some(9)]
    );
    // Mailboxes keep the order of their first message event; uids ascend within each.
    let mixed = Transaction::new(
        "u",
        vec![
            flags_set("Sent", 7, &["\\Seen"]),
            flags_set("INBOX", 9, &["\\Seen"]),
            flags_set("Sent", 2, &["\\Seen"]),
            flags_set("INBOX", 4, &["\\Seen"]),
        ],
    );
    assert_eq!(
        shape(&group(&mixed, EventSet::all()))
            .iter()
            .map(|r| (r.0.as_str(), r.1))
            .collect::<Vec<_>>(),
        [
            ("Sent", Some(2)),
            ("Sent", Some(7)),
            ("INBOX", Some(4)),
            ("INBOX", Some(9))
        ]
    );
    // Without FlagsClear, the same order.
    assert_eq!(
        shape(&group(&txn, EventSet::empty().with(FlagsSet))),
        vec![
            ("INBOX".into(), Some(3), vec![FlagsSet]),
            ("INBOX".into(), Some(9), vec![FlagsSet]),
        ]
    );
}

#[test]
fn event_name_helpers() {
    assert_eq!(EventName::ALL.len(), 12);
    for name in EventName::ALL {
        assert_eq!(name.as_str().parse::<EventName>().unwrap(), name);
        assert_eq!(name.to_string(), name.as_str());
        assert_ne!(name.is_mailbox_event(), name.is_message_event());
        let sample: Event =
            serde_json::from_str(&sample_event(name)).expect("serde accepts the sample");
        assert_eq!(sample.name(), name);
        assert_eq!(sample.message().is_some(), name.is_message_event());
    }
    let set: EventSet = [EventName::MessageTrash, EventName::FlagsClear]
        .into_iter()
        .collect();
    // Iteration is in Dovecot's registration order, not insertion order.
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        [EventName::FlagsClear, EventName::MessageTrash]
    );
    assert_eq!(EventSet::all().iter().collect::<Vec<_>>(), EventName::ALL);
}

/// `Transaction::json_of` puts the events' JSON together as `to_json` serialises the
/// whole transaction: for every example transaction, every event kind, and ids and users
/// that need escaping.
#[test]
fn json_of_event_json_equals_the_whole_transactions_json() {
    let text = include_str!("../../../examples/events.ndjson");
    let mut txns = parse_ndjson(text).unwrap();
    let all: Vec<String> = EventName::ALL.iter().map(|n| sample_event(*n)).collect();
    txns.push(
        Transaction::from_json(&format!(
            r#"{{"id":"q\"uote\\d","user":"ü\u0001@example.com","events":[{}]}}"#,
            all.join(",")
        ))
        .unwrap(),
    );
    // No event wanted (a driver may join and want none of them).
    txns.push(Transaction {
        id: "empty".into(),
        user: "a@b".into(),
        events: Vec::new(),
        metadata: Default::default(),
        encoded: Default::default(),
    });
    for t in &txns {
        let events: Vec<String> = t.events.iter().map(Event::to_json).collect();
        let mut plain = t.clone();
        plain.metadata.clear();
        assert_eq!(
            Transaction::json_of(&t.id, &t.user, &events),
            plain.to_json()
        );
        // The shared encoding is the same JSON.
        assert_eq!(t.event_json(), events.as_slice());
        assert_eq!(t.json_without_metadata(), plain.to_json());
    }
}

/// A transaction's shared encoding is made once and then handed out again; it is no part
/// of the transaction's value (equality, serialisation) and a clone, which may be changed,
/// starts without it.
#[test]
fn the_shared_encoding_is_made_once_and_not_copied() {
    let mut t = Transaction::from_json(
        r#"{"id":"1","user":"a@b","events":[{"name":"MailboxCreate","mailbox":"A"}],"metadata":{"k":"v"}}"#,
    )
    .unwrap();
    let untouched = t.clone();
    let first = t.event_json().as_ptr();
    assert_eq!(t.event_json().as_ptr(), first, "serialised once");
    let whole = t.json_without_metadata().as_ptr();
    assert_eq!(t.json_without_metadata().as_ptr(), whole);
    assert_eq!(t, untouched, "equal with or without it");
    assert_eq!(t.to_json(), untouched.to_json(), "never serialised");
    assert!(!t.to_json().contains("encoded"));
    let mut changed = t.clone();
    changed.events[0] = Event::MailboxCreate(mailpush_core::event::MailboxRef {
        mailbox: "B".into(),
    });
    assert_eq!(
        changed.event_json(),
        [r#"{"name":"MailboxCreate","mailbox":"B"}"#.to_string()],
        "a clone encodes its own events"
    );
    assert!(!changed.json_without_metadata().contains("\"k\""));
    // Parsed back, a transaction starts without it too.
    t = Transaction::from_json(&t.to_json()).unwrap();
    assert_eq!(t, untouched);
}

/// A line that is not UTF-8 is rejected by its number: a one-line transaction is left
/// out and the others parse; a pretty-printed one that includes it is rejected whole,
/// never parsed without that line (here the bad line is a whole event of a valid array).
#[test]
fn a_line_that_is_not_utf8_is_rejected_and_never_dropped_from_a_transaction() {
    let good = |user: &str| {
        format!(r#"{{"user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"X"}}]}}"#)
    };
    let mut input = format!("{}\n", good("a@b")).into_bytes();
    input.extend_from_slice(
        b"{\"user\":\"c@d\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"\xff\"}]}\n",
    );
    input.extend_from_slice(format!("{}\n", good("e@f")).as_bytes());
    // Lines 4-8: a pretty-printed transaction whose line 6 (an event) is not UTF-8.
    input.extend_from_slice(b"{\"user\":\"g@h\",\"events\":[\n  {\"name\":\"MailboxCreate\",\"mailbox\":\"Y\"},\n  {\"name\":\"MailboxCreate\",\"mailbox\":\"\xfe\"},\n  {\"name\":\"MailboxCreate\",\"mailbox\":\"Z\"}\n]}\n");
    let results = parse_stream_bytes(&input);
    let users: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|t| t.user.as_str())
        .collect();
    assert_eq!(users, ["a@b", "e@f"], "{results:?}");
    let errors: Vec<(usize, String)> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| (e.line, e.error.to_string()))
        .collect();
    assert!(
        errors.contains(&(
            2,
            "$: not valid UTF-8 (byte 60 of the line); the line is skipped".to_string()
        )),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(l, e)| *l == 6 && e.contains("not valid UTF-8")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(l, e)| *l == 4 && e.contains("invalid JSON")),
        "the pretty-printed transaction is rejected where it starts: {errors:?}"
    );
    assert_eq!(errors.len(), 3, "nothing else: {errors:?}");
    // Valid UTF-8 parses as parse_stream does (ids are fresh per parse: compare users).
    let text = format!("{}\n{}\nnot json\n", good("a@b"), good("c@d"));
    let users =
        |r: Vec<Result<Transaction, mailpush_core::LineError>>| -> Vec<Result<String, usize>> {
            r.into_iter()
                .map(|r| r.map(|t| t.user).map_err(|e| e.line))
                .collect()
        };
    assert_eq!(
        users(parse_stream_bytes(text.as_bytes())),
        users(parse_stream(&text))
    );
}
