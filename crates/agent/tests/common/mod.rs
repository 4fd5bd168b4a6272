//! Test support: run the built binary, keep every child under a guard that kills it by pid, speak just enough
//! HTTP/1.1 over a std `TcpStream` to script the fake upstream and call the proxy.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_retrybudget")
}

/// A command for the binary with no inherited `RETRYBUDGET_*` or `OTEL_*` settings.
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("RETRYBUDGET_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs to completion, killing the child if it takes longer than `timeout`.
pub fn run(mut c: Command, timeout: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let mut guard = Proc::from_child(child);
    let status = guard.wait_timeout(timeout).unwrap_or_else(|| {
        panic!(
            "{:?} did not finish in {timeout:?}; stdout so far:\n{}",
            c,
            guard.stdout()
        )
    });
    guard.finish_output(status)
}

/// Text of an output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running child process, killed (by pid) and reaped when dropped, whatever path the test takes.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Spawns with piped output.
    pub fn spawn(mut c: Command) -> Proc {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        Proc::from_child(c.spawn().unwrap())
    }

    fn from_child(mut child: Child) -> Proc {
        let (tx, lines) = channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let buf = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    buf.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                let mut r = BufReader::new(err);
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }));
        }
        Proc {
            child,
            stdout,
            stderr,
            lines,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the `listening on http://ADDR` line and returns ADDR.
    pub fn wait_for_addr(&self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split(|c: char| c.is_whitespace()).next().unwrap();
                        return addr.parse().unwrap();
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no `listening on` line in {timeout:?}; stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Waits for exit at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM by pid.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -TERM failed");
    }

    fn finish_output(&mut self, status: ExitStatus) -> Output {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Output {
            status,
            stdout: self.stdout().into_bytes(),
            stderr: self.stderr().into_bytes(),
        }
    }

    /// After exit: joins the output readers.
    pub fn output_after_exit(&mut self, status: ExitStatus) -> Output {
        self.finish_output(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection (`Connection: close`), read to the end.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A valid chat-completions body with a placeholder prompt.
pub const CHAT: &str =
    r#"{"model":"fake-model","messages":[{"role":"user","content":"placeholder"}],"max_tokens":8}"#;

/// Starts `retrybudget fake-upstream` on a free port.
pub fn fake_upstream() -> (Proc, SocketAddr) {
    let p = Proc::spawn(cmd(&["fake-upstream", "--listen", "127.0.0.1:0"]));
    let addr = p.wait_for_addr(Duration::from_secs(20));
    (p, addr)
}

/// An address nothing listens on: a port bound on 127.0.0.2 and released. Everything else in these tests binds
/// 127.0.0.1, so a parallel test that is handed the same port number cannot answer on it.
pub fn closed_addr() -> SocketAddr {
    // Where 127.0.0.2 is not a loopback address (macOS), fall back to 127.0.0.1.
    let l = std::net::TcpListener::bind("127.0.0.2:0")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    l.local_addr().unwrap()
}
