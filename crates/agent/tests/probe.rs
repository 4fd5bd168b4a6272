//! `retrybudget probe` exports the happy-path check as a metric; `fake-upstream` and `probe` stop cleanly on
//! SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Proc, cmd, fake_upstream, http};

#[test]
fn probe_exports_its_result_and_stops_on_sigterm() {
    let (mut upstream, up_addr) = fake_upstream();
    let mut probe = Proc::spawn(cmd(&[
        "probe",
        "--base-url",
        &format!("http://{up_addr}"),
        "--model",
        "fake-model",
        "--interval",
        "1s",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = probe.wait_for_addr(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = http(addr, "GET", "/metrics", "", Duration::from_secs(5)).unwrap();
        if m.body.lines().any(|l| {
            l.starts_with("retrybudget_probe_success")
                && l.contains("happy_path")
                && l.ends_with(" 1")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful probe in /metrics:\n{}",
            m.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http(addr, "GET", "/healthz", "", Duration::from_secs(5))
            .unwrap()
            .status,
        200
    );
    // A broken upstream turns the gauge to 0.
    http(
        up_addr,
        "PUT",
        "/_control/default",
        r#"{"status":401}"#,
        Duration::from_secs(5),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = http(addr, "GET", "/metrics", "", Duration::from_secs(5)).unwrap();
        if m.body
            .lines()
            .any(|l| l.starts_with("retrybudget_probe_success") && l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing probe never showed:\n{}",
            m.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probe.stdout().contains("FAIL"), "{}", probe.stdout());
    probe.terminate();
    let status = probe
        .wait_timeout(Duration::from_secs(15))
        .expect("probe did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0));
    upstream.terminate();
    let status = upstream
        .wait_timeout(Duration::from_secs(15))
        .expect("fake-upstream did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0));
}
