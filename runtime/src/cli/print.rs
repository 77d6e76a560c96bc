//! What the commands print: tables and reports, for a person at a terminal.

use std::path::Path;

use crate::commands::check::CheckReport;
use crate::commands::send::SendReport;
use crate::spool::DeadLetter;
use crate::status::Status;

/// `mailpush check`: the settings set in the config (`all_settings`: every one, like
/// `doveconf`), the driver table and warnings on stdout, errors on stderr.
pub fn check(path: &Path, report: &CheckReport, all_settings: bool) {
    match report {
        CheckReport::Invalid { errors, warnings } => {
            eprintln!("{}: configuration is invalid:", path.display());
            for w in warnings {
                eprintln!("warning: {w}");
            }
            for e in in_file_order(errors) {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} error(s); fix them and run `mailpush check` again",
                errors.len()
            );
        }
        CheckReport::Loaded {
            config,
            state_dir,
            listen,
            cluster,
            settings,
            drivers,
            warnings,
            errors,
            tenants_failed,
            incomplete,
            ..
        } => {
            println!("config: {}", config.display());
            println!("state_dir: {}", state_dir.display());
            println!("listen: {listen}");
            if let Some(c) = cluster {
                println!("cluster: {c}");
            }
            print_settings(settings, all_settings);
            println!();
            if !drivers.is_empty() {
                println!("{:<4} {:<12} {:<7} ARGS", "#", "NAME", "KIND");
            }
            for d in drivers {
                println!("{:<4} {:<12} {:<7} {}", d.number, d.name, d.kind, d.args);
                for line in &d.details {
                    println!("{:<4} {:<12} {:<7}   {line}", "", "", "");
                }
            }
            if drivers.is_empty() && errors.is_empty() {
                println!(
                    "(no drivers: set push_notification_driver = NAME[:ARGS] in a plugin {{ }} block)"
                );
            }
            if !warnings.is_empty() {
                println!();
                for w in warnings {
                    println!("warning: {w}");
                }
            }
            if errors.is_empty() && (*tenants_failed > 0 || *incomplete) {
                println!();
                let mut missing = Vec::new();
                if *incomplete {
                    missing.push(
                        "the config names drivers that would not run, or none (warnings above)"
                            .to_string(),
                    );
                }
                if *tenants_failed > 0 {
                    missing.push(format!("{tenants_failed} tenant handler problem(s) (warnings above): those tenants' transactions would be held, retrying, until their files are fixed"));
                }
                println!(
                    "{} driver(s) ready, but {}: `mailpush run` would start without them (exit status 3)",
                    drivers.len(),
                    missing.join("; and ")
                );
            } else if errors.is_empty() {
                println!();
                println!("OK: {} driver(s) ready", drivers.len());
            } else {
                eprintln!();
                for e in in_file_order(errors) {
                    eprintln!("error: {e}");
                }
                // (Dovecot's way with a driver that fails, said where one does.)
                let driver_failed = errors
                    .iter()
                    .any(|e| e.message.contains("failed to initialise"));
                eprintln!(
                    "{} error(s); mailpush refuses to start with this config{}",
                    errors.len(),
                    if driver_failed {
                        " (Dovecot would silently drop the failing driver and every later-numbered one)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

/// The `mailpush { }` settings as they take effect: those the config sets, with where;
/// with `all`, every key (the others marked as defaults).
fn print_settings(settings: &[mailpush_config::EffectiveSetting], all: bool) {
    let shown: Vec<_> = settings.iter().filter(|s| all || s.at.is_some()).collect();
    let defaults = settings.len() - settings.iter().filter(|s| s.at.is_some()).count();
    if shown.is_empty() && !all {
        println!("settings: all at their defaults (`mailpush check --settings` lists them)");
        return;
    }
    println!();
    println!(
        "{}",
        if all {
            "settings (mailpush { } block: each as set, or its default):"
        } else {
            "settings the config sets (mailpush { } block):"
        }
    );
    let width = shown.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in &shown {
        let at =
            s.at.as_ref()
                .map_or_else(|| "(default)".to_string(), |l| format!("({l})"));
        println!("  {:<width$} = {}  {at}", s.key, s.value);
    }
    if !all && defaults > 0 {
        println!("  ({defaults} more at their defaults: `mailpush check --settings` lists them)");
    }
}

/// Errors in the order of the files (as first named) and of lines within each, those
/// about no place first: the order they were found in (syntax, then drivers) is not
/// the order of the file a person reads.
fn in_file_order(errors: &[mailpush_config::ConfigError]) -> Vec<&mailpush_config::ConfigError> {
    let mut files: Vec<&Path> = Vec::new();
    for e in errors {
        if let Some(l) = &e.location {
            if !files.contains(&l.file.as_path()) {
                files.push(&l.file);
            }
        }
    }
    let mut sorted: Vec<_> = errors.iter().collect();
    sorted.sort_by_key(|e| match &e.location {
        None => (0, 0),
        Some(l) => (
            1 + files
                .iter()
                .position(|f| *f == l.file.as_path())
                .unwrap_or(0),
            l.line,
        ),
    });
    sorted
}

/// `mailpush send`: per-driver counts on stderr (stdout may carry dlog lines).
pub fn send(report: &SendReport) {
    eprintln!(
        "{} transaction(s) accepted, {} rejected",
        report.accepted, report.rejected
    );
    if report.repeated > 0 {
        eprintln!(
            "{} of them already in the spool (their ids are stored, and delivered, once: see `mailpush dlq list`)",
            report.repeated
        );
    }
    eprintln!(
        "{:<4} {:<12} {:>9} {:>8} {:>7}",
        "#", "DRIVER", "DELIVERED", "SKIPPED", "FAILED"
    );
    for r in &report.drivers {
        eprintln!(
            "{:<4} {:<12} {:>9} {:>8} {:>7}",
            r.number, r.name, r.delivered, r.skipped, r.failed
        );
    }
}

/// `mailpush status`: one line per driver, then the endpoint circuits seen failing.
pub fn status(status: &Status) {
    println!(
        "{:<4} {:<16} {:<10} {:<9} {:>7} {:>9} {:>7} {:>8}",
        "#", "DRIVER", "STATE", "CIRCUIT", "QUEUED", "DELIVERED", "FAILED", "SKIPPED"
    );
    let mut endpoints = Vec::new();
    for d in &status.drivers {
        // QUEUED: waiting in the queue, held by the lane (being delivered or waiting for
        // a retry), or left in the spool for a user over its share of the lane.
        println!(
            "{:<4} {:<16} {:<10} {:<9} {:>7} {:>9} {:>7} {:>8}",
            d.number,
            d.name,
            d.state().as_str(),
            d.circuit.as_str(),
            d.queued + d.held + d.diverted,
            d.delivered,
            d.failed,
            d.skipped
        );
        for e in &d.endpoints {
            endpoints.push(format!(
                "{:<4} {}{} {}",
                d.number,
                e.scope
                    .as_deref()
                    .map(|s| format!("{s}: "))
                    .unwrap_or_default(),
                e.endpoint,
                e.state.as_str()
            ));
        }
    }
    for d in &status.drivers {
        if let Some(loading) = &d.loading {
            println!("{:<4} {loading}", d.number);
        }
    }
    if !endpoints.is_empty() {
        println!("\nendpoint circuits (endpoints seen failing):");
        for line in endpoints {
            println!("{line}");
        }
    }
    let ingest = &status.ingest;
    let count = |m: &std::collections::BTreeMap<String, u64>| {
        let parts: Vec<String> = m
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let total: u64 = m.values().sum();
        if parts.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", parts.join(" "))
        }
    };
    if let Some(c) = &status.cluster {
        println!(
            "\ncluster: node {} ({}), {} of {} partitions owned here, {} rebalance(s)",
            c.node,
            if c.connected {
                "NATS connected"
            } else {
                "NATS UNREACHABLE"
            },
            c.owned.len(),
            c.partitions,
            c.rebalances
        );
        for n in &c.nodes {
            println!(
                "  {:<24} {:>4} partitions  drivers {}{}",
                n.name,
                n.owned,
                n.fingerprint,
                if c.drift.contains(&n.name) {
                    "  CONFIG DRIFT"
                } else {
                    ""
                }
            );
        }
        let lag: u64 = c.lag.iter().map(|(_, _, l)| l).sum();
        println!("  not yet delivered by this node's drivers: {lag}");
    }
    println!(
        "\ningest: {} transaction(s) received, rejected {}; {} connection(s) open, cut or refused {}",
        ingest.received,
        count(&ingest.rejected),
        ingest.connections_open,
        count(&ingest.connections_cut)
    );
}

/// `mailpush dlq list`.
pub fn dead_letters(letters: &[DeadLetter]) {
    println!(
        "{:<6} {:<6} {:<28} {:<38} {:>8}  LAST ERROR",
        "ID", "DRIVER", "USER", "TRANSACTION", "ATTEMPTS"
    );
    for d in letters {
        println!(
            "{:<6} {:<6} {:<28} {:<38} {:>8}  {}",
            d.id,
            d.driver,
            d.txn.user,
            d.txn.id,
            d.attempts.len(),
            d.attempts.last().map(|a| a.error.as_str()).unwrap_or("")
        );
    }
    eprintln!("{} dead letter(s)", letters.len());
}

/// Unix seconds as RFC 3339 (UTC); as `N (unix)` past year 9999, which RFC 3339 cannot
/// write (a damaged record must not make `dlq show` fail).
fn rfc3339(secs: u64) -> String {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(at) if secs <= LAST => humantime::format_rfc3339_seconds(at).to_string(),
        _ => format!("{secs} (unix)"),
    }
}

/// `mailpush dlq show`.
pub fn dead_letter(d: &DeadLetter) {
    println!(
        "id: {}\ndriver: {}\nuser: {}\ntransaction: {}",
        d.id, d.driver, d.txn.user, d.txn.id
    );
    for (i, a) in d.attempts.iter().enumerate() {
        println!("attempt {}: at {}: {}", i + 1, rfc3339(a.at), a.error);
    }
    println!("{}", d.txn.to_json());
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_rfc3339_and_never_fail() {
        assert_eq!(super::rfc3339(1), "1970-01-01T00:00:01Z");
        assert_eq!(super::rfc3339(u64::MAX), format!("{} (unix)", u64::MAX));
        assert_eq!(super::rfc3339(253_402_300_800), "253402300800 (unix)");
    }
}
