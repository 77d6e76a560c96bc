//! Hostile components beside a well-behaved driver: each is stopped as configured with a
//! clear reason, the process survives, and the good driver receives every transaction.

use std::sync::Arc;

use mailpush::pipeline::Outcome;
use mailpush_e2e::*;

// `BOTH` (tests/src): the hostile driver as it is (it imports wasi:http and a clock, so
// it is called on a fiber) and built without its waiting modes (it imports nothing to wait
// on, so it is called synchronously: runtime/src/wasm/synchronous.rs). The bounds tested
// with both hold on both paths.

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_hits_the_deadline() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=loop timeout_msecs=50", 3).await;
        assert_eq!(out.len(), 3, "{g}");
        for r in reasons(&out) {
            assert!(
                r.contains("deadline exceeded") && r.contains("timeout_msecs=50"),
                "{g}: {r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_hits_the_memory_cap() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=memory memory=8M", 2).await;
        for r in reasons(&out) {
            assert!(
                r.contains("memory limit reached") && r.contains("memory=8M"),
                "{g}: {r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_is_a_stack_overflow() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=recursion", 2).await;
        for r in reasons(&out) {
            assert!(r.contains("stack overflow"), "{g}: {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn immediate_trap_is_contained() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=trap", 3).await;
        for r in reasons(&out) {
            assert!(r.contains("trap"), "{g}: {r}");
        }
    }
}

/// An uncaught exception in a JavaScript or Python driver prints its message and stack on
/// stderr and ends in a trap: the failure's reason starts with what it printed.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_trapping_driver_printed_is_its_reason() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=stderr-trap", 2).await;
        for r in reasons(&out) {
            assert!(
                r.starts_with(
                    "TypeError: cannot read property 'x' of undefined |     at deliver (driver.js:12:5) (then: "
                ),
                "{g}: {r}"
            );
            assert!(r.contains("trap"), "{g}: {r}");
            assert!(!r.contains("progress"), "stderr's lines are preferred: {r}");
        }
    }
}

/// Guest stdout and stderr reach the log (info and warn), within the log budget.
#[tokio::test(flavor = "multi_thread")]
async fn guest_stdout_and_stderr_go_to_the_log() {
    let log = send_logged("mode=print", 2);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("from the driver"))
        .collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(lines.iter().any(|l| l.contains("INFO")
        && l.contains("console.log from the driver")
        && l.contains("driver=1")));
    assert!(lines
        .iter()
        .any(|l| l.contains("WARN") && l.contains("console.error from the driver")));
    let log = send_logged("mode=print max_log_lines=1", 2);
    assert_eq!(
        count(&log, "from the driver"),
        2,
        "one line per transaction: {log}"
    );
}

/// A component whose initial memory alone exceeds `memory=` is told so, not that it
/// "grew" past it.
#[tokio::test(flavor = "multi_thread")]
async fn an_initial_memory_over_the_limit_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok memory=64K\n}}\n",
        guest("hostile").display()
    );
    let config = write_config(dir.path(), &conf);
    let Err((_, errors)) = TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("a 64K memory cannot hold the component");
    };
    let e = errors[0].to_string();
    assert!(
        e.contains("the component's initial memory (") && e.contains("is larger than memory=64K"),
        "{e}"
    );
    assert!(!e.contains("tried to grow"), "{e}");
}

/// A driver logging 100000 lines per transaction: `max_log_lines` of them reach the log
/// per transaction, and one note per transaction counts the rest.
#[tokio::test(flavor = "multi_thread")]
async fn log_flood_is_capped() {
    // Longer than one deadline slice: a synchronous guest runs on while within its
    // budget, as an async one does.
    let args = "mode=logflood max_log_lines=10 timeout_msecs=5000";
    for g in BOTH {
        let (out, _) = run_guest(g, args, 2).await;
        assert!(out.iter().all(|o| *o == Outcome::Delivered), "{g}: {out:?}");
        let (ok, log) = send_guest(g, args, 2);
        assert!(ok, "{log}");
        assert_eq!(count(&log, "flood line"), 20, "{g}: {log}");
        assert_eq!(
            count(&log, "99990 log lines dropped (max_log_lines=10"),
            2,
            "{g}: {log}"
        );
    }
}

/// The drop reports are bounded too: 30 flooding transactions give one host warning at
/// the first drop, then at most one per 10 s summing the drops since, and one at shutdown
/// for the rest — not 30. (On an idle machine the run takes under 10 s: two reports.)
#[tokio::test(flavor = "multi_thread")]
async fn log_drop_reports_are_rate_limited() {
    let started = std::time::Instant::now();
    let log = send_logged("mode=logflood max_log_lines=10 timeout_msecs=5000", 30);
    let took = started.elapsed();
    assert_eq!(count(&log, "flood line"), 300, "{log}");
    let reported: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let (before, _) = l.split_once(" log lines dropped")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        reported.first(),
        Some(&99990),
        "the first drop at once: {log}"
    );
    assert_eq!(
        reported.iter().sum::<u64>(),
        30 * 99990,
        "every drop counted: {log}"
    );
    let bound = 2 + (took.as_secs() / 10) as usize;
    assert!(
        (2..=bound).contains(&reported.len()),
        "{} reports in {took:?}: {log}",
        reported.len()
    );
}

/// Across transactions the driver's log rate applies: with `log_burst=15` and no
/// refill, two transactions of at most 10 lines each write 15 lines in all.
#[tokio::test(flavor = "multi_thread")]
async fn log_rate_is_limited_per_driver() {
    let log = send_logged(
        "mode=logflood max_log_lines=10 log_burst=15 log_lines_per_sec=0 timeout_msecs=5000",
        2,
    );
    assert_eq!(count(&log, "flood line"), 15, "{log}");
    assert_eq!(count(&log, "99990 log lines dropped"), 1, "{log}");
    assert_eq!(count(&log, "99995 log lines dropped"), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_to_a_host_not_allowed_is_refused() {
    let (out, _) = run_hostile(
        "mode=http url=http://hooks.example.com/x allow_hosts=other.example.com",
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("not in allow_hosts"), "{r}");
    assert!(r.contains("refused"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_without_grant_is_refused() {
    let (out, _) = run_hostile("mode=http url=http://hooks.example.com/x", 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("no hosts granted"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_to_loopback_and_metadata_service_refused_without_allow_private() {
    let server = RecordingServer::start().await;
    let url = server.url("/hook");
    let (out, _) = run_hostile(&format!("mode=http url={url} allow_hosts=127.0.0.1"), 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("private") && r.contains("allow_private"), "{r}");
    let (out, _) = run_hostile(
        "mode=http url=http://169.254.169.254/latest/meta-data allow_hosts=*",
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(
        r.contains("private") && r.contains("169.254.169.254"),
        "{r}"
    );
    assert!(
        server.requests().is_empty(),
        "no request may reach the server"
    );
    // With the grant, the same request goes through (the driver then reports it was not refused).
    let (out, _) = run_hostile(
        &format!("mode=http url={url} allow_hosts=127.0.0.1 allow_private"),
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("NOT refused: status 200"), "{r}");
    assert_eq!(server.requests().len(), 1);
}

/// A name that resolves only to loopback is refused without `allow_private`, and the
/// refusal is in the failure reason.
#[tokio::test(flavor = "multi_thread")]
async fn http_to_a_name_resolving_to_loopback_is_refused() {
    let server = RecordingServer::start().await;
    let url = format!("http://localhost:{}/hook", server.addr.port());
    let (out, _) = run_hostile(&format!("mode=http url={url} allow_hosts=localhost"), 1).await;
    let r = &reasons(&out)[0];
    assert!(
        r.contains("request refused by the sandbox")
            && r.contains("outbound HTTP refused: localhost resolves to")
            && r.contains("allow_private"),
        "{r}"
    );
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_a_file_is_denied() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=file", 1).await;
        let r = &reasons(&out)[0];
        assert!(r.contains("file access denied"), "{g}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_returned_string_is_truncated() {
    for g in BOTH {
        // Building and lifting 8 MiB takes ~10 ms; on a loaded machine that can pass the
        // default 100 ms (the deadline counts time the OS gives other processes while the
        // call runs). The deadline is not what this test is about.
        let (out, _) = run_guest(g, "mode=huge timeout_msecs=5000", 1).await;
        let r = &reasons(&out)[0];
        assert!(
            r.len() < 2048 && r.ends_with("[truncated]"),
            "{g}: {} bytes",
            r.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_in_init_is_reported_with_number_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = record\n push_notification_driver2 = wasm:file={} mode=panic-init\n}}\n",
        guest("hostile").display()
    );
    let config = write_config(dir.path(), &conf);
    let drivers = TestDrivers::new();
    let Err((loaded, errors)) = drivers
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("init must fail");
    };
    assert_eq!(loaded.len(), 1, "the good driver still initialised");
    let e = errors[0].to_string();
    assert!(
        e.contains("driver 2 (wasm)") && e.contains("init failed"),
        "{e}"
    );
    // The reason is the guest's own panic message (the SDK's panic hook logs it before the
    // trap), not a wasm backtrace.
    assert!(
        e.contains("the driver panicked: panicked at")
            && e.contains("hostile driver panics in init on purpose"),
        "{e}"
    );
    assert!(!e.contains("0x"), "{e}");
}

/// A numbered driver that panics in init keeps mailpush from starting (its config is
/// refused, see above); a tenant handler is loaded while running, so one that panics in
/// init fails only its own tenant's transactions, with the panic as the reason, and every
/// other tenant gets every transaction.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_that_panics_in_init_fails_only_its_own_transactions() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    std::fs::copy(guest("hostile"), tenants.join("bad.example.wasm")).unwrap();
    std::fs::write(tenants.join("bad.example.conf"), "mode=panic-init\n").unwrap();
    std::fs::copy(guest("webhook"), tenants.join("good.example.wasm")).unwrap();
    std::fs::write(
        tenants.join("good.example.conf"),
        format!(
            "url={}\nallow_hosts=127.0.0.1 allow_private\n",
            server.url("/good")
        ),
    )
    .unwrap();
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n delivery = memory\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let driver = loaded[0].driver.clone();
    let mut good = 0;
    for i in 0..6 {
        let (user, id) = if i % 2 == 0 {
            ("u@bad.example", format!("b{i}"))
        } else {
            ("u@good.example", format!("g{i}"))
        };
        let out =
            mailpush::pipeline::deliver(driver.as_ref(), &Arc::new(mailbox_txn(user, &id))).await;
        match out {
            mailpush::pipeline::Outcome::Failed(f) => {
                assert!(user.ends_with("bad.example"), "{f:?}");
                assert!(
                    f.reason.contains("the driver panicked")
                        && f.reason
                            .contains("hostile driver panics in init on purpose"),
                    "{}",
                    f.reason
                );
            }
            other => {
                assert!(user.ends_with("good.example"), "{other:?}");
                assert_eq!(other, mailpush::pipeline::Outcome::Delivered);
                good += 1;
            }
        }
    }
    assert_eq!(good, 3);
    let got: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    assert_eq!(got, ["g1", "g3", "g5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_limit_stops_a_loop() {
    for g in BOTH {
        let (out, _) = run_guest(g, "mode=loop fuel=1000000 timeout_msecs=10000", 1).await;
        let r = &reasons(&out)[0];
        assert!(r.contains("fuel exhausted"), "{g}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_data_beyond_max_event_bytes_is_refused() {
    let (out, _) = run_hostile("mode=ok max_event_bytes=64", 2).await;
    for r in reasons(&out) {
        assert!(r.contains("max_event_bytes=64"), "{r}");
    }
}
