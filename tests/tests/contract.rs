//! The contract's 0.1.1 revision (wit/driver.wit): a component built against 0.1.0 runs
//! unchanged; `fixed-begin` answers every transaction from a declaration made once at
//! load; `host.hmac-sha256` signs in the host's native code, within its bounds.

use std::sync::Arc;

use mailpush::pipeline::{deliver, Outcome};
use mailpush_core::Transaction;
use mailpush_e2e::*;

/// Loads the one driver of a config made from `line` (`push_notification_driver = …`).
async fn load_one(line: &str) -> mailpush::pipeline::LoadedDriver {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = {line}\n}}\n"
    );
    let config = write_config(dir.path(), &conf);
    load_drivers(&TestDrivers::new().registry(), &config)
        .await
        .pop()
        .expect("one driver")
}

fn line_starting<'a>(details: &'a [String], prefix: &str) -> &'a str {
    details
        .iter()
        .find(|l| l.starts_with(prefix))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {prefix} line in {details:?}"))
}

fn instances(d: &mailpush::pipeline::LoadedDriver) -> u64 {
    d.driver
        .counters()
        .into_iter()
        .find(|(k, _)| *k == "wasm_instances")
        .map(|(_, v)| v)
        .expect("wasm_instances counter")
}

fn two_event_txn(user: &str, id: &str) -> Arc<Transaction> {
    Arc::new(
        Transaction::from_json(&format!(
            r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"Work"}},{{"name":"MessageNew","mailbox":"INBOX","uid":42,"uid_validity":7}},{{"name":"MailboxDelete","mailbox":"Old"}}]}}"#
        ))
        .expect("valid transaction"),
    )
}

/// A driver built against the frozen 0.1.0 contract (tests/guests/contract-0.1.0) loads on
/// this 0.1.1 host, on both call paths, and every part of the contract works as it did:
/// init's arguments, begin-txn's skip and events, the typed events and their JSON, the
/// transaction's JSON, host.log and host.metadata-get.
#[tokio::test(flavor = "multi_thread")]
async fn a_driver_built_against_0_1_0_runs_unchanged() {
    let path = guest("contract-0.1.0");
    for extra in ["", " calls=async", " instance=reuse", " init=per-instance"] {
        let d = load_one(&format!("wasm:file={} tag=old{extra}", path.display())).await;
        assert_eq!(
            line_starting(&d.details, "wit: "),
            "wit: mailpush:driver@0.1.0",
            "{extra}"
        );
        assert_eq!(
            line_starting(&d.details, "begin-txn: "),
            "begin-txn: called per transaction",
            "{extra}"
        );
        let skipped = deliver(d.driver.as_ref(), &two_event_txn("skip@example.com", "s1")).await;
        assert_eq!(skipped, Outcome::Skipped, "{extra}");
        let out = deliver(d.driver.as_ref(), &two_event_txn("a@example.com", "t1")).await;
        let reason = reasons(&[out])[0].clone();
        let txn = two_event_txn("a@example.com", "t1");
        let jsons: String = txn.events.iter().map(|e| e.to_json()).collect();
        assert_eq!(
            reason,
            format!(
                "tag=old id=t1 user=a@example.com events=[create:Work,new:INBOX:42,other] json={jsons} metadata=None txn_json_len={}",
                txn.json_without_metadata().len()
            ),
            "{extra}"
        );
    }
}

/// `fixed-begin` answered `all` at load: begin-txn is never called (the hostile driver
/// panics if it is) and every transaction is delivered; `deletes`: only MailboxDelete
/// reaches `deliver`; `skip`: nothing is called, not even an instance is made; `none` (or
/// no answer): begin-txn per transaction, as before. On both call paths.
#[tokio::test(flavor = "multi_thread")]
async fn fixed_begin_answers_every_transaction_from_load() {
    for name in BOTH {
        let path = guest(name);
        let all = load_one(&format!("wasm:file={} mode=ok fixed=all", path.display())).await;
        assert_eq!(
            line_starting(&all.details, "begin-txn: "),
            "begin-txn: not called, fixed at load (fixed-begin): every event",
            "{name}"
        );
        for i in 0..3 {
            let out = deliver(
                all.driver.as_ref(),
                &two_event_txn("a@example.com", &format!("t{i}")),
            )
            .await;
            assert_eq!(out, Outcome::Delivered, "{name}");
        }

        let deletes = load_one(&format!(
            "wasm:file={} mode=echo fixed=deletes",
            path.display()
        ))
        .await;
        assert_eq!(
            line_starting(&deletes.details, "begin-txn: "),
            "begin-txn: not called, fixed at load (fixed-begin): MailboxDelete",
            "{name}"
        );
        let out = deliver(
            deletes.driver.as_ref(),
            &two_event_txn("a@example.com", "t1"),
        )
        .await;
        let reason = reasons(&[out])[0].clone();
        assert!(reason.contains("MailboxDelete"), "{name}: {reason}");
        assert!(
            !reason.contains("MailboxCreate") && !reason.contains("MessageNew"),
            "{name}: only the declared events are delivered: {reason}"
        );

        let skip = load_one(&format!("wasm:file={} mode=ok fixed=skip", path.display())).await;
        assert_eq!(
            line_starting(&skip.details, "begin-txn: "),
            "begin-txn: not called, fixed at load (fixed-begin): skip every transaction",
            "{name}"
        );
        let made = instances(&skip);
        for i in 0..3 {
            let out = deliver(
                skip.driver.as_ref(),
                &two_event_txn("a@example.com", &format!("t{i}")),
            )
            .await;
            assert_eq!(out, Outcome::Skipped, "{name}");
        }
        assert_eq!(instances(&skip), made, "{name}: a skip needs no instance");

        let none = load_one(&format!(
            "wasm:file={} mode=ok want=mailbox-delete fixed=none",
            path.display()
        ))
        .await;
        assert_eq!(
            line_starting(&none.details, "begin-txn: "),
            "begin-txn: called per transaction",
            "{name}"
        );
        let out = deliver(none.driver.as_ref(), &two_event_txn("a@example.com", "t1")).await;
        assert_eq!(out, Outcome::Delivered, "{name}");
    }
}

/// A driver that skips every transaction (`fixed=skip`) keeps no warm instance with
/// `instance=reuse`: the instance probed at load is dropped, its slot and memory with it;
/// one with a fixed `all` keeps it, as any reused driver does.
#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_skip_keeps_no_instance_even_with_reuse() {
    let engines = Arc::new(mailpush::wasm::engine::Engines::new(None));
    for name in BOTH {
        for (fixed, held) in [("skip", false), ("all", true)] {
            let d = load_wasm(
                &guest(name),
                &format!("mode=ok fixed={fixed} instance=reuse"),
                &engines,
                Arc::new(mailpush_core::NoMetadata),
            )
            .await;
            assert_eq!(d.holds_warm_instance(), held, "{name} fixed={fixed}");
            let out = deliver(&d, &two_event_txn("a@example.com", "t1")).await;
            let expected = if held {
                Outcome::Delivered
            } else {
                Outcome::Skipped
            };
            assert_eq!(out, expected, "{name} fixed={fixed}");
            assert_eq!(d.holds_warm_instance(), held, "{name} fixed={fixed}");
        }
    }
}

/// What `fixed-begin` does in the instance it runs in never reaches a fresh instance: each
/// transaction sees what `init` left (`remember` fails with what it saw otherwise), from
/// a snapshot and with `init=per-instance`.
#[tokio::test(flavor = "multi_thread")]
async fn fixed_begin_leaves_nothing_in_fresh_instances() {
    for name in BOTH {
        for args in [
            "mode=remember tag=a fixed=all",
            "mode=remember tag=a fixed=all init=per-instance",
        ] {
            let (out, _) = run_guest(name, args, 3).await;
            assert!(
                out.iter().all(|o| *o == Outcome::Delivered),
                "{name} {args}: {out:?}"
            );
        }
    }
}

/// A `fixed-begin` that traps refuses the driver at load, saying so, with what it wrote
/// itself and not what `init` wrote before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fixed_begin_refuses_the_driver() {
    for name in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok fixed=panic say=noise\n}}\n",
            guest(name).display()
        );
        let e = first_init_error(&write_config(dir.path(), &conf)).await;
        assert!(
            e.contains("fixed-begin failed: fixed-begin says noise (then: the driver panicked")
                && e.contains("fixed-begin refuses")
                && !e.contains("init says"),
            "{name}: {e}"
        );
    }
}

/// With `instance=reuse` the instance probed at load becomes the warm one: what `init`
/// and `fixed-begin` wrote there is not the first transaction's to report, on both call
/// paths, with and without a fixed answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_reused_transaction_reports_nothing_from_the_load() {
    for name in BOTH {
        for fixed in ["", " fixed=all"] {
            let d = load_one(&format!(
                "wasm:file={} mode=trap say=noise instance=reuse{fixed}",
                guest(name).display()
            ))
            .await;
            let Outcome::Failed(f) =
                deliver(d.driver.as_ref(), &two_event_txn("a@example.com", "t1")).await
            else {
                panic!("{name}{fixed}: mode=trap fails")
            };
            assert!(f.reason.contains("trap"), "{name}{fixed}: {}", f.reason);
            assert!(
                !f.reason.contains("says noise"),
                "{name}{fixed}: the load's output in a transaction's failure: {}",
                f.reason
            );
        }
    }
}

/// A `fixed-begin` that never returns is stopped by `init_timeout_msecs` (here far below
/// the CPU deadline, `timeout_msecs`), and the driver is refused at load, on both call
/// paths.
#[tokio::test(flavor = "multi_thread")]
async fn a_spinning_fixed_begin_is_stopped_by_the_init_timeout() {
    for name in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok fixed=loop timeout_msecs=20000 init_timeout_msecs=300\n}}\n",
            guest(name).display()
        );
        let started = std::time::Instant::now();
        let e = first_init_error(&write_config(dir.path(), &conf)).await;
        assert!(
            e.contains("fixed-begin did not answer within the")
                && e.contains(
                    "init left of init_timeout_msecs=300 (init and fixed-begin share it)"
                ),
            "{name}: {e}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{name}: refused after {:?}",
            started.elapsed()
        );
    }
}

/// `host.hmac-sha256` gives the HMAC of what the guest passed: checked against an
/// HMAC written out from RFC 2104 (tests/src), over the transaction JSON the guest saw.
#[tokio::test(flavor = "multi_thread")]
async fn host_hmac_matches_rfc_2104() {
    for name in BOTH {
        let (out, _) = run_guest(name, "mode=hmac key=s3cret", 2).await;
        for (i, reason) in reasons(&out).iter().enumerate() {
            let txn = mailbox_txn(&format!("u{i}@example.com"), &format!("t{i}"));
            let json = txn.json_without_metadata();
            let expected: String = hmac_sha256(b"s3cret", json.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(reason, &expected, "{name}: over {json}");
        }
    }
}

/// The host's HMAC is bounded: a call with more than 16 MiB traps naming the bound, and a
/// guest hashing in a loop through the host is stopped by its deadline (the hashing is
/// its time, not waiting).
#[tokio::test(flavor = "multi_thread")]
async fn host_hmac_is_bounded() {
    for name in BOTH {
        let (out, _) = run_guest(name, "mode=hmac-huge memory=64M", 1).await;
        let reason = reasons(&out)[0].clone();
        assert!(
            reason.contains("more than the 16 MiB one call may hash"),
            "{name}: {reason}"
        );
        let started = std::time::Instant::now();
        let (out, _) = run_guest(name, "mode=hmac-loop timeout_msecs=50", 1).await;
        let reason = reasons(&out)[0].clone();
        assert!(
            reason.contains("deadline exceeded") && reason.contains("timeout_msecs=50"),
            "{name}: {reason}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{name}: stopped in {:?}",
            started.elapsed()
        );
    }
}

/// A component built against a later 0.1.x that imports a host function this host lacks
/// is refused at load, naming both versions and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_patch_needing_more_than_this_host_names_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={}\n}}\n",
        guest("newer-patch").display()
    );
    let e = first_init_error(&write_config(dir.path(), &conf)).await;
    assert!(
        e.contains("imports something mailpush does not provide")
            && e.contains("built against mailpush:driver@0.1.2, newer than this mailpush's 0.1.1")
            && e.contains("upgrade mailpush"),
        "{e}"
    );
}
