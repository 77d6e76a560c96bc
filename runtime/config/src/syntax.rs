//! Dovecot's config syntax, read into raw settings: `key = value` (value optionally in
//! quotes), `NAME {` and `NAME ARG {` blocks closed by `}`, `#` comments (from the first
//! `#` outside quotes; one that does not follow whitespace is warned about, as Dovecot
//! does), `key = <FILE` (the value read from a file, for the settings mailpush uses), a
//! `\` at a line's end continuing it on the next (as in
//! Dovecot), `!include FILE` and `!include_try FILE` (relative to the
//! including file; a glob such as `conf.d/*.conf` expands in sorted order, as Dovecot's
//! glob(3) does, and one matching nothing is an error for `!include`; `!include_try`
//! passes over a file it cannot open). Files are UTF-8 ([`decode`]). Only `plugin { }`
//! (anywhere, `protocol` blocks included) and
//! `mailpush { }` settings are kept, with Dovecot 2.4's `push_notification NAME { }`
//! blocks (at top level or in `protocol` blocks; a nested `lua_settings { }`) and the
//! `push_notification_ox { }` defaults filter; others are Dovecot's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dovecot24;
use super::error::{ConfigError, ConfigWarning, Location};

/// A raw `key = value` with where it was set and which block it was in.
#[derive(Debug, Clone)]
pub struct RawSetting {
    pub value: String,
    pub location: Location,
}

/// A `key = value` line inside a Dovecot 2.4 block, in file order.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub key: String,
    pub value: String,
    pub location: Location,
    /// The line as written (trimmed), for error messages.
    pub text: String,
}

/// A Dovecot 2.4 `push_notification NAME { }` block. Blocks of the same name are one
/// driver (Dovecot 2.4 merges them): their entries are appended to the first one's.
#[derive(Debug, Clone)]
pub struct RawBlock {
    pub name: String,
    /// The (first) opening line.
    pub location: Location,
    /// `push_notification NAME {` as written.
    pub head: String,
    /// The block's `key = value` lines.
    pub entries: Vec<RawEntry>,
    /// The entries of its `lua_settings { }` (and `lua_settings/KEY = VALUE` lines),
    /// keys without the prefix.
    pub lua_settings: Vec<RawEntry>,
}

/// Everything read from the files, before interpretation.
#[derive(Default)]
pub struct RawConfig {
    /// Settings of `plugin { }` blocks (anywhere), later ones win.
    pub plugin: BTreeMap<String, RawSetting>,
    /// Settings of `plugin { }` blocks whose value is a file (`key = <FILE`) mailpush
    /// does not read (not a `push_notification_*` setting): kept out of `plugin`.
    pub plugin_files: BTreeMap<String, Location>,
    /// Settings of `mailpush { }` blocks.
    pub mailpush: BTreeMap<String, RawSetting>,
    /// Dovecot 2.4 `push_notification NAME { }` blocks, in file order.
    pub blocks: Vec<RawBlock>,
    /// Entries of Dovecot 2.4 `push_notification_ox { }` filters (and
    /// `push_notification_ox/KEY = VALUE` lines): defaults for every ox block.
    pub ox_defaults: Vec<RawEntry>,
    /// Where the first `push_notification_ox { }` filter (or `push_notification_ox/…`
    /// line) is.
    pub ox_defaults_at: Option<Location>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
    /// Driver settings the numbering passes over (after a gap, misnumbered, a typo
    /// away from `push_notification_driver`), each with a warning.
    pub ignored_drivers: usize,
}

/// A config file's bytes as text: UTF-8, a leading byte-order mark dropped. A line with
/// bytes that are not UTF-8 is refused (with its number: mailpush would otherwise read a
/// value other than the one written), unless they are in its comment, which is ignored
/// anyway (a Latin-1 `# café` from an old Dovecot config).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<String, ConfigError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(bytes.len());
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(l) => out.push_str(l),
            Err(e) => {
                let valid = std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or_default();
                let (_, commented) = split_comment_at(valid);
                if !commented {
                    return Err(ConfigError {
                        location: Some(Location {
                            file: path.to_path_buf(),
                            line: i + 1,
                        }),
                        text: String::new(),
                        message: format!(
                            "not UTF-8 (byte 0x{:02X} at column {}): mailpush reads config files as UTF-8; convert the file (e.g. `iconv -f latin1 -t utf-8`)",
                            line[e.valid_up_to()],
                            e.valid_up_to() + 1
                        ),
                    });
                }
                out.push_str(&String::from_utf8_lossy(line));
            }
        }
    }
    Ok(out)
}

/// Whether a `#` outside quotes in `text` starts a comment.
fn split_comment_at(text: &str) -> (&str, bool) {
    let (before, _) = split_comment(text);
    (before, before.len() < text.len())
}

/// Dovecot's own names a typo away from one of [`BLOCK_NAMES`] (2.4's `protocols { }`
/// boolean list): no warning for them.
const DOVECOT_NEAR_NAMES: &[&str] = &["protocols"];

/// Block names mailpush reads (and Dovecot's `protocol`, `mail_plugins`): another
/// name a typo away from one of them is warned about, as the block would be ignored.
const BLOCK_NAMES: &[&str] = &[
    "mailpush",
    "plugin",
    "push_notification",
    "push_notification_ox",
    "protocol",
    "lua_settings",
    "mail_plugins",
];

/// Reads config text as if from `path` (following its includes).
pub fn read(path: &Path, text: &str) -> RawConfig {
    let mut raw = RawConfig::default();
    read_text(path, text, &mut raw, &mut Vec::new(), 0);
    raw
}

const MAX_INCLUDE_DEPTH: usize = 16;

/// Lines of one file that are not config syntax reported before it is given up.
const MAX_NOT_CONFIG_LINES: usize = 3;

/// Block kinds that matter to mailpush.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Plugin,
    Mailpush,
    Protocol,
    /// `push_notification NAME {` (Dovecot 2.4): the index in [`RawConfig::blocks`].
    Push(usize),
    /// `lua_settings {` inside the `push_notification` block with this index.
    LuaSettings(usize),
    /// `push_notification_ox {` (Dovecot 2.4's defaults for every ox block).
    OxDefaults,
    /// `mail_plugins {` (Dovecot 2.4's boollist: `push_notification = yes`): ignored.
    MailPlugins,
    Other,
}

/// Opens a `push_notification NAME {` block (or reopens the earlier one of that name).
fn open_push_block(raw: &mut RawConfig, name: String, location: &Location, head: &str) -> Block {
    if let Some(i) = raw.blocks.iter().position(|b| b.name == name) {
        let first = raw.blocks[i].location.clone();
        raw.warnings.push(ConfigWarning {
            location: Some(location.clone()),
            message: format!(
                "`{head} {{` continues the block of the same name at {first}: Dovecot 2.4 makes them one driver (later settings win)"
            ),
        });
        return Block::Push(i);
    }
    raw.blocks.push(RawBlock {
        name,
        location: location.clone(),
        head: head.to_string(),
        entries: Vec::new(),
        lua_settings: Vec::new(),
    });
    Block::Push(raw.blocks.len() - 1)
}

/// Strips a `#` comment as Dovecot does: from the first `#` outside quotes (`"` or `'`,
/// with `\` escaping inside them). Also returns whether that `#` followed something
/// other than whitespace (`secret=abc#def`: Dovecot warns that it takes it as a
/// comment, and so does mailpush).
fn split_comment(line: &str) -> (&str, bool) {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' => return (&line[..i], !prev.is_whitespace()),
                _ => {}
            },
        }
        prev = c;
    }
    (line, false)
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    let quoted = |q: char| v.len() >= 2 && v.starts_with(q) && v.ends_with(q);
    if quoted('"') || quoted('\'') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

/// One line as Dovecot reads it: comments stripped from each physical line, then lines
/// ending in `\` joined with the next.
struct LogicalLine {
    /// Its first physical line (numbered from 1).
    line: usize,
    /// Without comments, continuations joined (the backslash and the whitespace around
    /// each break become one space).
    text: String,
    /// The physical lines whose comment began with a `#` not after whitespace.
    ambiguous: Vec<usize>,
}

/// The file's [`LogicalLine`]s.
fn logical_lines(text: &str) -> Vec<LogicalLine> {
    let mut out = Vec::new();
    let mut pending: Option<LogicalLine> = None;
    for (i, physical) in text.lines().enumerate() {
        let (line, ambiguous) = split_comment(physical);
        let mut logical = pending.take().unwrap_or(LogicalLine {
            line: i + 1,
            text: String::new(),
            ambiguous: Vec::new(),
        });
        if ambiguous {
            logical.ambiguous.push(i + 1);
        }
        let piece = if logical.text.is_empty() {
            line
        } else {
            line.trim_start()
        };
        match piece.trim_end().strip_suffix('\\') {
            Some(head) => {
                logical.text.push_str(head.trim_end());
                logical.text.push(' ');
                pending = Some(logical);
            }
            None => {
                logical.text.push_str(piece);
                out.push(logical);
            }
        }
    }
    out.extend(pending);
    out
}

fn read_text(
    path: &Path,
    text: &str,
    raw: &mut RawConfig,
    stack: &mut Vec<(Block, Location, String)>,
    depth: usize,
) {
    let base_depth = stack.len();
    let mut not_config = 0;
    for logical in logical_lines(text) {
        let full_line = logical.text.as_str();
        let location = Location {
            file: path.to_path_buf(),
            line: logical.line,
        };
        for at in logical.ambiguous {
            raw.warnings.push(ConfigWarning {
                location: Some(Location {
                    file: path.to_path_buf(),
                    line: at,
                }),
                message: "a `#` that does not follow a space starts a comment here (as in Dovecot, which warns the same): what follows it is ignored; put the value in quotes to keep the `#`, or a space before it to silence this".into(),
            });
        }
        let line = full_line.trim();
        if line.is_empty() {
            continue;
        }
        let error = |raw: &mut RawConfig, message: String| {
            raw.errors.push(ConfigError {
                location: Some(location.clone()),
                text: full_line.trim().to_string(),
                message,
            })
        };
        if let Some(rest) = line.strip_prefix('!') {
            let (directive, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let arg = unquote(arg);
            match directive {
                "include" | "include_try" if !arg.is_empty() => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        error(raw, format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels (an include loop?); expected each file to be included at most once along a chain — remove the `!include` that leads back"));
                        continue;
                    }
                    let dir = path.parent().unwrap_or(Path::new("."));
                    let targets = match expand_glob(dir, &arg) {
                        // As Dovecot: `!include` of a glob matching nothing is an error
                        // ("No matches"), `!include_try`'s is not.
                        Some(matches) if matches.is_empty() && directive == "include" => {
                            error(raw, format!("no file matches `{arg}` (in {}); use `!include_try` where none may be there", dir.display()));
                            continue;
                        }
                        Some(matches) => matches,
                        None => vec![dir.join(&arg)],
                    };
                    for target in targets {
                        // `!include_try` passes over a file it cannot open, as Dovecot's;
                        // one it opens is read like any other.
                        let bytes = match std::fs::File::open(&target) {
                            Err(_) if directive == "include_try" => continue,
                            Err(e) => Err(e),
                            Ok(mut f) => {
                                let mut bytes = Vec::new();
                                std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
                            }
                        };
                        match bytes.map(|b| decode(&target, &b)) {
                            Ok(Ok(t)) => read_text(&target, &t, raw, stack, depth + 1),
                            Ok(Err(e)) => raw.errors.push(e),
                            Err(e) => error(raw, format!("cannot include {}: {e}", target.display())),
                        }
                    }
                }
                "include" | "include_try" => error(raw, format!("!{directive} needs a file name: !{directive} FILE")),
                _ => error(raw, format!("unknown directive `!{directive}`; expected `!include FILE` or `!include_try FILE`")),
            }
            continue;
        }
        if line == "}" {
            if stack.len() <= base_depth {
                error(raw, "`}` without an open block".to_string());
            } else {
                stack.pop();
            }
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            let mut words = head.split_whitespace();
            let head = head.trim();
            // The innermost enclosing block other than `protocol`.
            let enclosing = stack
                .iter()
                .rev()
                .map(|(b, _, _)| b.clone())
                .find(|b| *b != Block::Protocol);
            let kind = match (words.next(), words.next(), words.next()) {
                // Inside a Dovecot 2.4 block only `lua_settings {` is a block mailpush reads.
                (first, _, _)
                    if matches!(
                        enclosing,
                        Some(Block::Push(_) | Block::LuaSettings(_) | Block::OxDefaults)
                    ) && !(first == Some("lua_settings")
                        && matches!(enclosing, Some(Block::Push(_)))) =>
                {
                    let inside = match &enclosing {
                        Some(Block::Push(i)) => format!("`{} {{ }}`", raw.blocks[*i].head),
                        Some(Block::LuaSettings(_)) => "`lua_settings { }`".to_string(),
                        _ => "`push_notification_ox { }`".to_string(),
                    };
                    error(
                        raw,
                        format!(
                            "`{head} {{` is not supported inside {inside}; a push_notification block holds `key = value` lines and one `lua_settings {{ }}` block"
                        ),
                    );
                    Block::Other
                }
                (Some("lua_settings"), None, _) => match enclosing {
                    Some(Block::Push(i)) => Block::LuaSettings(i),
                    Some(Block::Plugin) => {
                        error(raw, dovecot24::LUA_SETTINGS_IN_PLUGIN.to_string());
                        Block::Other
                    }
                    // A global lua_settings (mail_lua's): Dovecot's business.
                    _ => Block::Other,
                },
                (Some("push_notification"), name, None) => match (&enclosing, name) {
                    (_, None) => {
                        error(
                            raw,
                            "a push_notification block needs a name: `push_notification NAME {` (Dovecot 2.4)"
                                .to_string(),
                        );
                        Block::Other
                    }
                    (Some(Block::Plugin), _) => {
                        error(
                            raw,
                            "`push_notification NAME {` is Dovecot 2.4 syntax, which has no plugin { } section: put the block outside `plugin { }` (at top level or in a `protocol` block); in Dovecot 2.3 write `push_notification_driver = …` lines in plugin { } instead"
                                .to_string(),
                        );
                        Block::Other
                    }
                    (Some(_), _) => {
                        error(
                            raw,
                            "mailpush reads `push_notification NAME {` blocks at top level and inside `protocol NAME { }` blocks only".to_string(),
                        );
                        Block::Other
                    }
                    (None, Some(name)) => open_push_block(raw, unquote(name), &location, head),
                },
                (Some("push_notification"), Some(_), Some(_)) => {
                    error(
                        raw,
                        "expected `push_notification NAME {` (one name, Dovecot 2.4)".to_string(),
                    );
                    Block::Other
                }
                (Some("push_notification_ox"), None, _) => match enclosing {
                    None => {
                        if raw.ox_defaults_at.is_none() {
                            raw.ox_defaults_at = Some(location.clone());
                        }
                        Block::OxDefaults
                    }
                    Some(Block::Plugin) => {
                        error(
                            raw,
                            "`push_notification_ox {` is Dovecot 2.4 syntax, which has no plugin { } section: put it outside `plugin { }`; in Dovecot 2.3 write max_retries=/timeout_msecs= on the `push_notification_driver = ox:…` line"
                                .to_string(),
                        );
                        Block::Other
                    }
                    Some(_) => Block::Other,
                },
                (Some("mail_plugins"), None, _) => Block::MailPlugins,
                (Some("plugin"), None, _) => Block::Plugin,
                (Some("mailpush"), None, _) => Block::Mailpush,
                (Some("protocol"), Some(_), None) => Block::Protocol,
                (Some("protocol"), None, _) => {
                    error(
                        raw,
                        "a protocol block needs a name: `protocol imap {`".to_string(),
                    );
                    Block::Other
                }
                (Some(other), _, _) => {
                    let near = super::suggest::nearest(other, BLOCK_NAMES)
                        .filter(|_| !DOVECOT_NEAR_NAMES.contains(&other));
                    if let Some(meant) = near {
                        raw.warnings.push(ConfigWarning {
                            location: Some(location.clone()),
                            message: format!(
                                "`{head} {{` is not a block mailpush reads: everything in it is ignored. Did you mean `{meant}`?"
                            ),
                        });
                    }
                    Block::Other
                }
                (None, _, _) => {
                    error(
                        raw,
                        "a block needs a name: `plugin {`, `mailpush {`, `protocol NAME {`"
                            .to_string(),
                    );
                    Block::Other
                }
            };
            stack.push((kind, location.clone(), head.to_string()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            // Not config syntax: shown when it looks like a setting missing its `=`; else
            // it may be anything (a key file included by mistake) and is not shown. A
            // file full of such lines is given up.
            not_config += 1;
            if not_config > MAX_NOT_CONFIG_LINES {
                raw.errors.push(ConfigError {
                    location: Some(location.clone()),
                    text: String::new(),
                    message: format!(
                        "more lines that are not config syntax: {} does not look like a config file (was it included by mistake?); the rest of it is not read",
                        path.display()
                    ),
                });
                break;
            }
            let looks_like_config = matches!(
                line.split_whitespace().collect::<Vec<_>>()[..],
                [first, _, ..] if first.len() <= 64
                    && first.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
            raw.errors.push(ConfigError {
                location: Some(location.clone()),
                text: if looks_like_config { full_line.trim().to_string() } else { String::new() },
                message: if looks_like_config {
                    "expected `key = value`, `NAME {`, `}` or `!include FILE`".to_string()
                } else {
                    "expected `key = value`, `NAME {`, `}` or `!include FILE` (the line is not shown: it does not look like config)".to_string()
                },
            });
            continue;
        };
        let key = key.trim().to_string();
        // `NAME { key = value }` on one line: Dovecot refuses it too ("Garbage after '{'").
        if let Some((head, _)) = key.split_once('{') {
            error(
                raw,
                format!(
                    "a block's `{{` must end its line (as in Dovecot): write `{} {{`, then each setting on a line of its own, then `}}`",
                    head.trim()
                ),
            );
            continue;
        }
        if key.is_empty() || key.contains(char::is_whitespace) {
            error(
                raw,
                format!("`{key}` is not a setting name; expected `key = value`"),
            );
            continue;
        }
        // The innermost block that matters decides where a setting belongs.
        let scope = stack
            .iter()
            .rev()
            .map(|(b, _, _)| b.clone())
            .find(|b| *b != Block::Protocol)
            .unwrap_or(Block::Protocol);
        let in_block = !stack.is_empty();
        let is_push = key.starts_with("push_notification_");
        // Dovecot's `key = <FILE`: the value is the file's content (relative to this
        // file; its last line break dropped). Read only for settings mailpush uses: a
        // Dovecot config's other `<FILE`s (`ssl_key = </etc/…`) are not its business.
        let ours = match scope {
            Block::Push(_) | Block::LuaSettings(_) | Block::OxDefaults | Block::Mailpush => true,
            Block::Plugin | Block::Protocol => is_push,
            _ => false,
        };
        // Another plugin's file (`mail_crypt_global_private_key = </…`) is not read:
        // neither mailpush nor a script it runs has any business with it.
        if scope == Block::Plugin && !ours && value.trim().starts_with('<') {
            raw.plugin.remove(&key);
            raw.plugin_files.insert(key, location.clone());
            continue;
        }
        let value = match value.trim().strip_prefix('<').filter(|_| ours) {
            Some(file) => {
                let file = path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(file.trim_start());
                // The file is the value, byte for byte (no comments in it), in UTF-8.
                let read = std::fs::read(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        String::from_utf8(bytes).map_err(|e| {
                            format!(
                                "not UTF-8 (byte 0x{:02X} at offset {})",
                                e.as_bytes()[e.utf8_error().valid_up_to()],
                                e.utf8_error().valid_up_to()
                            )
                        })
                    });
                match read {
                    Ok(text) => {
                        let text = text.strip_suffix('\n').unwrap_or(&text);
                        text.strip_suffix('\r').unwrap_or(text).to_string()
                    }
                    Err(e) => {
                        error(
                            raw,
                            format!("{key} = <FILE: cannot read {}: {e}", file.display()),
                        );
                        continue;
                    }
                }
            }
            None => unquote(value),
        };
        let entry = |key: String, value: String| RawEntry {
            key,
            value,
            location: location.clone(),
            text: full_line.trim().to_string(),
        };
        match scope {
            Block::Push(i) => match key.strip_prefix("lua_settings/") {
                Some(k) => raw.blocks[i].lua_settings.push(entry(k.to_string(), value)),
                None => raw.blocks[i].entries.push(entry(key, value)),
            },
            Block::LuaSettings(i) => raw.blocks[i].lua_settings.push(entry(key, value)),
            Block::OxDefaults => raw.ox_defaults.push(entry(key, value)),
            Block::MailPlugins => {} // which plugins Dovecot loads: its business
            Block::Protocol if key.starts_with("push_notification_ox/") => {
                if raw.ox_defaults_at.is_none() {
                    raw.ox_defaults_at = Some(location.clone());
                }
                let k = key["push_notification_ox/".len()..].to_string();
                raw.ox_defaults.push(entry(k, value));
            }
            Block::Plugin => {
                raw.plugin_files.remove(&key);
                // A Dovecot 2.4 setting written into plugin { }: say which version it is.
                if let Some(message) = dovecot24::v24_key_in_plugin(&key, &value) {
                    error(raw, message);
                    continue;
                }
                if let Some(prev) = raw.plugin.get(&key) {
                    if is_push && prev.value != value {
                        raw.warnings.push(ConfigWarning {
                            location: Some(location.clone()),
                            message: format!(
                                "{key} overrides the value set at {} (the later one wins)",
                                prev.location
                            ),
                        });
                    }
                }
                raw.plugin.insert(key, RawSetting { value, location });
            }
            Block::Mailpush => {
                // Dovecot's rule, the later one wins; but a setting given twice with
                // different values is most often a mistake (two blocks, a forgotten
                // line): say so.
                if let Some(prev) = raw.mailpush.get(&key) {
                    if prev.value != value {
                        raw.warnings.push(ConfigWarning {
                            location: Some(location.clone()),
                            message: format!(
                                "mailpush {{ {key} }} overrides the value set at {} (the later one wins)",
                                prev.location
                            ),
                        });
                    }
                }
                raw.mailpush.insert(key, RawSetting { value, location });
            }
            _ if is_push => error(raw, dovecot24::push_key_outside_blocks(&key, in_block)),
            _ => {} // settings for Dovecot that mailpush does not use
        }
    }
    while stack.len() > base_depth {
        if let Some((_, loc, head)) = stack.pop() {
            raw.errors.push(ConfigError {
                location: Some(loc),
                text: format!("{head} {{"),
                message: "block is never closed: add a `}`".to_string(),
            });
        }
    }
}

/// Expands a glob in an include's argument (`conf.d/*.conf`, as Dovecot's glob(3)),
/// sorted; `None` when the argument has no glob characters. The including file's folder
/// is taken literally.
fn expand_glob(dir: &Path, arg: &str) -> Option<Vec<PathBuf>> {
    if !arg.contains(['*', '?', '[']) {
        return None;
    }
    let pattern = if Path::new(arg).is_absolute() {
        arg.to_string()
    } else {
        format!("{}/{arg}", glob::Pattern::escape(&dir.to_string_lossy()))
    };
    let mut out: Vec<PathBuf> = glob::glob(&pattern)
        .map(|paths| paths.filter_map(Result::ok).collect())
        .unwrap_or_default();
    out.sort();
    Some(out)
}
