//! `retrybudget proxy` as a process: an unreachable upstream is a quick 502 with evidence headers, and SIGTERM
//! drains an in-flight request before exiting 0 with its evidence written.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{CHAT, Proc, closed_addr, cmd, fake_upstream, http};

#[test]
fn unreachable_upstream_is_a_quick_502_with_outcome_header() {
    let upstream = format!("http://{}", closed_addr());
    let proxy = Proc::spawn(cmd(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
    ]));
    let addr = proxy.wait_for_addr(Duration::from_secs(20));
    let started = Instant::now();
    let r = http(
        addr,
        "POST",
        "/v1/chat/completions",
        CHAT,
        Duration::from_secs(10),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(r.header("x-retrybudget-outcome").is_some(), "{r:?}");
    assert!(r.header("x-retrybudget-attempts").is_some(), "{r:?}");
}

#[test]
fn sigterm_drains_the_in_flight_request_then_exits_0() {
    let (_upstream, up_addr) = fake_upstream();
    let r = http(
        up_addr,
        "PUT",
        "/_control/default",
        r#"{"delay_ms":1000}"#,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence.jsonl");
    let mut proxy = Proc::spawn(cmd(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{up_addr}"),
        "--evidence-file",
        evidence.to_str().unwrap(),
    ]));
    let addr = proxy.wait_for_addr(Duration::from_secs(20));
    let caller = std::thread::spawn(move || {
        http(
            addr,
            "POST",
            "/v1/chat/completions",
            CHAT,
            Duration::from_secs(20),
        )
    });
    // Wait until the request is at the upstream (so it is in flight in the proxy), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = http(
            up_addr,
            "GET",
            "/_control/count",
            "",
            Duration::from_secs(5),
        )
        .unwrap();
        if count.body.contains("\"count\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.terminate();
    let response = caller.join().unwrap().unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-retrybudget-outcome"), Some("success"));
    let status = proxy
        .wait_timeout(Duration::from_secs(15))
        .expect("the proxy did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    let lines: Vec<String> = std::fs::read_to_string(&evidence)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(row["terminal_outcome"], "success");
    assert_eq!(row["http_status_code"], 200);
}

#[test]
fn metrics_and_healthz_are_served() {
    let (_upstream, up_addr) = fake_upstream();
    let proxy = Proc::spawn(cmd(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{up_addr}"),
    ]));
    let addr = proxy.wait_for_addr(Duration::from_secs(20));
    let r = http(
        addr,
        "POST",
        "/v1/chat/completions",
        CHAT,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let m = http(addr, "GET", "/metrics", "", Duration::from_secs(10)).unwrap();
    assert_eq!(m.status, 200);
    assert!(m.body.contains("retrybudget_calls_total"), "{}", m.body);
    let h = http(addr, "GET", "/healthz", "", Duration::from_secs(10)).unwrap();
    assert_eq!(h.status, 200);
}
