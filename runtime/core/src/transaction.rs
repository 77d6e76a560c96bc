//! Transactions in canonical JSON: parsing with precise errors (JSON path, NDJSON line),
//! and serialisation back to the same form.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, EventName, SYSTEM_FLAGS};

/// What a Dovecot driver sees between begin_txn and end_txn: one user, an ordered
/// list of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Unique id; assigned by mailpush (a UUIDv7) when the source sends none. Receivers
    /// use it to deduplicate at-least-once deliveries.
    pub id: String,
    /// The login user name, e.g. `alice@example.com`.
    pub user: String,
    /// The events, in the order the source reported them.
    pub events: Vec<Event>,
    /// METADATA entries (key → value) the source already knows for this user; they
    /// take precedence over mailpush's own METADATA store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Its canonical JSON as drivers receive it, made at the first driver's use and
    /// shared by the others ([`Transaction::event_json`]). Build it empty
    /// (`Default::default()`); it is no part of the transaction's value.
    #[serde(skip)]
    pub encoded: Encoded,
}

/// A transaction's canonical JSON, serialised once and shared by every driver that reads
/// the transaction: each event's, and the whole transaction's without METADATA.
///
/// Not part of the transaction's value: it always compares equal, is never serialised,
/// and a clone starts empty (a clone may be changed; the transaction drivers read is
/// behind an `Arc` and is not).
#[derive(Default)]
pub struct Encoded {
    events: OnceLock<Box<[String]>>,
    whole: OnceLock<String>,
}

impl Clone for Encoded {
    fn clone(&self) -> Self {
        Encoded::default()
    }
}

impl PartialEq for Encoded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Encoded {}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.events.get().is_some() {
            "Encoded"
        } else {
            "Encoded(not yet)"
        })
    }
}

/// A rejected transaction: where (JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ParseError {
    /// JSON path of the offending value, `$` for the whole document.
    pub path: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// A rejected line of an NDJSON stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub error: ParseError,
}

fn err(path: impl fmt::Display, message: impl Into<String>) -> ParseError {
    ParseError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ParseError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(
            format!("{path}.{key}"),
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

impl Transaction {
    /// The transaction's own METADATA value of `key`, whose name is compared without
    /// regard to ASCII case (METADATA entry names are case-insensitive: RFC 5464, and
    /// Dovecot); an exact match first.
    pub fn metadata_value(&self, key: &str) -> Option<&String> {
        self.metadata.get(key).or_else(|| {
            self.metadata
                .iter()
                .find_map(|(k, v)| k.eq_ignore_ascii_case(key).then_some(v))
        })
    }

    /// A new transaction with a fresh id.
    pub fn new(user: impl Into<String>, events: Vec<Event>) -> Self {
        Transaction {
            id: new_id(),
            user: user.into(),
            events,
            metadata: BTreeMap::new(),
            encoded: Encoded::default(),
        }
    }

    /// What stands for a stored transaction this mailpush cannot read (a dead letter's,
    /// written by a later version or damaged): its id and user, no events.
    pub fn unreadable(id: impl Into<String>, user: impl Into<String>) -> Self {
        Transaction {
            id: id.into(),
            user: user.into(),
            events: Vec::new(),
            metadata: BTreeMap::new(),
            encoded: Encoded::default(),
        }
    }

    /// Parses one transaction from canonical JSON.
    pub fn from_json(text: &str) -> Result<Transaction, ParseError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(
                "$",
                format!(
                    "invalid JSON at line {} column {}: {}",
                    e.line(),
                    e.column(),
                    strip_position(&e.to_string())
                ),
            )
        })?;
        Transaction::from_value(value)
    }

    /// Validates and converts an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Transaction, ParseError> {
        let Value::Object(obj) = value else {
            return Err(err(
                "$",
                format!(
                    "expected a transaction object {{\"user\": …, \"events\": […]}}, found {}",
                    type_name(&value)
                ),
            ));
        };
        for key in obj.keys() {
            if !["id", "user", "events", "metadata"].contains(&key.as_str()) {
                return Err(err(
                    format!("$.{key}"),
                    "unknown field; a transaction has: id, user, events, metadata",
                ));
            }
        }
        let user = string_field(&obj, "user", "$")?
            .ok_or_else(|| err("$", "missing field `user` (the login user name)"))?;
        if user.is_empty() {
            return Err(err("$.user", "must not be empty"));
        }
        let id = match string_field(&obj, "id", "$")? {
            Some(id) if id.is_empty() => return Err(err("$.id", "must not be empty")),
            Some(id) => id,
            None => new_id(),
        };
        let metadata = match obj.get("metadata") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => {
                            return Err(err(
                                format!("$.metadata[{}]", quote(k)),
                                format!("expected a string value, found {}", type_name(other)),
                            ))
                        }
                    }
                }
                out
            }
            Some(other) => {
                return Err(err(
                    "$.metadata",
                    format!(
                        "expected an object of METADATA key → value, found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        let events = match obj.get("events") {
            None => return Err(err("$", "missing field `events` (a list of events)")),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(err("$.events", "a transaction needs at least one event"))
            }
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| parse_event(v, &format!("$.events[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(err(
                    "$.events",
                    format!("expected an array of events, found {}", type_name(other)),
                ))
            }
        };
        Ok(Transaction {
            id,
            user,
            events,
            metadata,
            encoded: Encoded::default(),
        })
    }

    /// Canonical JSON of the whole transaction, on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Each event's canonical JSON ([`Event::to_json`]), in order: serialised at the first
    /// call, then shared by every later caller (every driver reading this transaction).
    pub fn event_json(&self) -> &[String] {
        self.encoded
            .events
            .get_or_init(|| self.events.iter().map(Event::to_json).collect())
    }

    /// The canonical JSON of the transaction without its METADATA (what
    /// [`Transaction::json_of`] gives for all its events): made at the first call, then
    /// shared.
    pub fn json_without_metadata(&self) -> &str {
        self.encoded
            .whole
            .get_or_init(|| Transaction::json_of(&self.id, &self.user, self.event_json()))
    }

    /// The canonical JSON of a transaction with this id and user, no METADATA, and the
    /// events whose canonical JSON ([`Event::to_json`]) is `events`, in that order —
    /// what [`Transaction::to_json`] gives for it, without serialising the events again.
    pub fn json_of<S: AsRef<str>>(id: &str, user: &str, events: &[S]) -> String {
        let len =
            events.iter().map(|e| e.as_ref().len() + 1).sum::<usize>() + id.len() + user.len();
        let mut out = String::with_capacity(len + 40);
        out.push_str("{\"id\":");
        out.push_str(&quote(id));
        out.push_str(",\"user\":");
        out.push_str(&quote(user));
        out.push_str(",\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(e.as_ref());
        }
        out.push_str("]}");
        out
    }
}

/// A fresh, time-ordered unique transaction id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// serde_json appends " at line X column Y" to messages; we report the position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn parse_event(value: &Value, path: &str) -> Result<Event, ParseError> {
    let Value::Object(obj) = value else {
        return Err(err(
            path,
            format!("expected an event object, found {}", type_name(value)),
        ));
    };
    let name = match obj.get("name") {
        None => {
            return Err(err(
                path,
                format!(
                    "missing field `name`; expected one of: {}",
                    crate::event::allowed_names()
                ),
            ))
        }
        Some(Value::String(s)) => s
            .parse::<EventName>()
            .map_err(|e| err(format!("{path}.name"), e.to_string()))?,
        Some(other) => {
            return Err(err(
                format!("{path}.name"),
                format!("expected a string, found {}", type_name(other)),
            ))
        }
    };
    let allowed = name.fields();
    for key in obj.keys() {
        if key != "name" && !allowed.contains(&key.as_str()) {
            return Err(err(
                format!("{path}.{key}"),
                format!(
                    "unknown field for {name}; allowed: name, {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    for required in ["mailbox", "uid", "uid_validity"] {
        if allowed.contains(&required) && !obj.contains_key(required) {
            return Err(err(
                path,
                format!("missing field `{required}` (required for {name})"),
            ));
        }
    }
    if name == EventName::MailboxRename && !obj.contains_key("mailbox_old") {
        return Err(err(
            path,
            "missing field `mailbox_old` (required for MailboxRename)",
        ));
    }
    // Deserialise the fields (without `name`) into the variant's own struct, so type
    // errors keep their full path.
    let mut fields = obj.clone();
    fields.remove("name");
    let fields = Value::Object(fields);
    fn de<T: serde::de::DeserializeOwned>(v: &Value, path: &str) -> Result<T, ParseError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let inner = e.path().to_string();
            let at = if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            err(at, e.into_inner().to_string())
        })
    }
    let event = match name {
        EventName::MessageNew => Event::MessageNew(de(&fields, path)?),
        EventName::MessageAppend => Event::MessageAppend(de(&fields, path)?),
        EventName::MessageExpunge => Event::MessageExpunge(de(&fields, path)?),
        EventName::MessageRead => Event::MessageRead(de(&fields, path)?),
        EventName::MessageTrash => Event::MessageTrash(de(&fields, path)?),
        EventName::FlagsSet => Event::FlagsSet(de(&fields, path)?),
        EventName::FlagsClear => Event::FlagsClear(de(&fields, path)?),
        EventName::MailboxCreate => Event::MailboxCreate(de(&fields, path)?),
        EventName::MailboxDelete => Event::MailboxDelete(de(&fields, path)?),
        EventName::MailboxRename => Event::MailboxRename(de(&fields, path)?),
        EventName::MailboxSubscribe => Event::MailboxSubscribe(de(&fields, path)?),
        EventName::MailboxUnsubscribe => Event::MailboxUnsubscribe(de(&fields, path)?),
    };
    for key in ["flags", "flags_old"] {
        if let Some(Value::Array(flags)) = obj.get(key) {
            for (i, f) in flags.iter().enumerate() {
                let f = f.as_str().unwrap_or_default();
                if !SYSTEM_FLAGS.contains(&f) {
                    return Err(err(
                        format!("{path}.{key}[{i}]"),
                        format!(
                            "{} is not an IMAP system flag; expected one of: {} (keywords go in `keywords`)",
                            quote(f),
                            SYSTEM_FLAGS.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    for key in ["keywords", "keywords_old"] {
        if let Some(Value::Array(kws)) = obj.get(key) {
            for (i, k) in kws.iter().enumerate() {
                let k = k.as_str().unwrap_or_default();
                if k.is_empty() || k.starts_with('\\') || k.contains(char::is_whitespace) {
                    return Err(err(
                        format!("{path}.{key}[{i}]"),
                        format!(
                            "{} is not an IMAP keyword (non-empty, no spaces, no leading backslash)",
                            quote(k)
                        ),
                    ));
                }
            }
        }
    }
    Ok(event)
}

/// Parses a stream of transactions: NDJSON (one per line) or any whitespace-separated
/// sequence of JSON objects, so a pretty-printed transaction works too. Each item is a
/// transaction or the error for the one starting on that line; after a JSON syntax
/// error parsing resumes after the end of the broken object when it can be found, so a
/// broken pretty-printed transaction yields one error, not one per leftover line.
pub fn parse_stream(text: &str) -> Vec<Result<Transaction, LineError>> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |offset: usize| line_starts.partition_point(|&s| s <= offset);
    let mut out = Vec::new();
    let mut base = 0;
    'outer: while base < text.len() {
        let mut stream = serde_json::Deserializer::from_str(&text[base..]).into_iter::<Value>();
        loop {
            let rest = &text[base + stream.byte_offset()..];
            let start = base + stream.byte_offset() + (rest.len() - rest.trim_start().len());
            match stream.next() {
                None => break 'outer,
                Some(Ok(value)) => {
                    out.push(Transaction::from_value(value).map_err(|error| LineError {
                        line: line_of(start),
                        error,
                    }))
                }
                Some(Err(e)) => {
                    // The error's own line, counted from the start of the text.
                    let err_line = line_of(base) + e.line().max(1) - 1;
                    out.push(Err(LineError {
                        line: line_of(start).min(err_line),
                        error: err(
                            "$",
                            format!(
                                "invalid JSON at line {err_line} column {}: {}",
                                e.column(),
                                strip_position(&e.to_string())
                            ),
                        ),
                    }));
                    base = resume_after_syntax_error(text, &line_starts, start, err_line);
                    continue 'outer;
                }
            }
        }
    }
    out
}

/// [`parse_stream`] over bytes that may not all be UTF-8 (a file, standard input): a line
/// that is not UTF-8 is an error of its own, naming its line and where in it the bad
/// byte is. A transaction of one line is then left out; one spread over several lines
/// that include it is rejected whole (a syntax error where it starts), never sent
/// without that line. The other lines parse as they would. The errors come in line
/// order.
pub fn parse_stream_bytes(bytes: &[u8]) -> Vec<Result<Transaction, LineError>> {
    /// Stands in for a line that is not UTF-8: not JSON, so whatever value holds the
    /// line fails to parse.
    const NOT_JSON: &str = "\u{1}";
    if let Ok(text) = std::str::from_utf8(bytes) {
        return parse_stream(text);
    }
    let mut text = String::with_capacity(bytes.len());
    let mut bad = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push('\n');
        }
        match std::str::from_utf8(line) {
            Ok(l) => text.push_str(l),
            Err(e) => {
                text.push_str(NOT_JSON);
                bad.push(LineError {
                    line: i + 1,
                    error: err(
                        "$",
                        format!(
                            "not valid UTF-8 (byte {} of the line); the line is skipped",
                            e.valid_up_to() + 1
                        ),
                    ),
                })
            }
        }
    }
    // The syntax error a stand-in causes on its own line says less than the UTF-8 error.
    let mut items: Vec<_> = parse_stream(&text)
        .into_iter()
        .filter(|i| !matches!(i, Err(e) if bad.iter().any(|b| b.line == e.line)))
        .collect();
    let line_of = |item: &Result<Transaction, LineError>| match item {
        Err(e) => Some(e.line),
        Ok(_) => None,
    };
    // Each bad line's error goes before the first item reported after it (a parsed
    // transaction carries no line: it keeps its place among the errors).
    for b in bad.into_iter().rev() {
        let at = items
            .iter()
            .position(|i| line_of(i).is_some_and(|l| l > b.line))
            .unwrap_or(items.len());
        items.insert(at, Err(b));
    }
    items
}

/// Parses a whole batch, all or nothing: the first bad transaction rejects the batch,
/// naming the line it starts on.
pub fn parse_ndjson(text: &str) -> Result<Vec<Transaction>, LineError> {
    parse_stream(text).into_iter().collect()
}

/// Where to resume parsing after a JSON syntax error in the value that starts at byte
/// `start`, reported on (1-based) line `err_line`. Returns a line start (or the end).
///
/// A syntax error leaves serde's position somewhere inside the broken value, so the
/// value's remaining lines must be skipped without a parser. The value is scanned from
/// its opening `{`/`[`, counting brackets outside strings (a string ends at its closing
/// quote or, since JSON strings cannot span lines, at the end of the line):
/// - if the brackets balance, the value ends there and parsing resumes on the next line
///   (not before the line after the error's line). This covers most mistakes (a missing
///   or extra comma, an unquoted key, a bad literal), however the object is laid out;
/// - if a line at or after the error's line opens a new object (its first non-blank is
///   `{`) no further right than the broken value's own `{` while the brackets are still
///   open, the broken value was truncated (a missing `}` or `]`) and that line is the
///   next transaction: parsing resumes there. In NDJSON every line qualifies, so a line
///   missing its closing brace no longer takes the following line down with it;
/// - otherwise the rest of the text belongs to the broken value.
///
/// A value that does not start with a bracket (a stray word) is skipped to the end of
/// the error's line, as is every error in NDJSON whose line is balanced.
fn resume_after_syntax_error(
    text: &str,
    line_starts: &[usize],
    start: usize,
    err_line: usize,
) -> usize {
    let after_line = |line: usize| line_starts.get(line).copied().unwrap_or(text.len());
    let bytes = text.as_bytes();
    if !matches!(bytes.get(start), Some(b'{' | b'[')) {
        return after_line(err_line);
    }
    let start_line = line_starts.partition_point(|&s| s <= start);
    let start_col = start - line_starts[start_line - 1];
    let mut line = start_line;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if b == b'\n' {
            line += 1;
            in_string = false;
            escaped = false;
            let next = &bytes[i + 1..];
            let indent = next
                .iter()
                .take_while(|&&c| c == b' ' || c == b'\t')
                .count();
            if line >= err_line && indent <= start_col && next.get(indent) == Some(&b'{') {
                return i + 1;
            }
        } else if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return after_line(line.max(err_line));
                    }
                }
                _ => {}
            }
        }
    }
    text.len()
}
