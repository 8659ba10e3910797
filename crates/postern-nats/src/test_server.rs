//! A throwaway `nats-server` process for tests and benchmarks that must
//! stop and restart NATS (the shared server of a machine cannot be
//! restarted by a test).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` child process on a loopback port; killed on drop.
pub struct TestServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Finds the `nats-server` binary: `POSTERN_NATS_SERVER`, then `PATH`,
/// then `/usr/sbin` and `/usr/local/bin`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POSTERN_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl TestServer {
    /// Starts `nats-server` on a free loopback port and waits until it
    /// accepts connections. `None` (after printing why) if the binary is
    /// not installed.
    pub fn start() -> Option<TestServer> {
        let Some(binary) = find_binary() else {
            eprintln!(
                "skipped: nats-server is not installed (set POSTERN_NATS_SERVER or put it on PATH)"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = TestServer {
            binary,
            port,
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (connections drop at once).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
