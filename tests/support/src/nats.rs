//! NATS for tests. [`nats_url`] is the machine's server (`TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on); [`NatsServer`] starts a private `nats-server` process
//! with JetStream on a port it picks itself (`-p -1`) and reports in its ports file
//! (`--ports_file_dir`), for tests that stop it mid-test (never the machine's server).
//! When NATS is missing the test is skipped with a loud message, unless `REQUIRE_NATS=1` (CI sets
//! it), in which case it fails.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `REQUIRE_NATS` asks for NATS tests to fail rather than skip.
pub fn nats_required() -> bool {
    matches!(
        std::env::var("REQUIRE_NATS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn skip_or_fail(why: String) {
    if nats_required() {
        panic!("REQUIRE_NATS is set but {why}");
    }
    eprintln!("\n!!!! SKIPPING: {why}; set REQUIRE_NATS=1 to fail instead !!!!\n");
}

/// The machine's NATS URL if it answers, else `None` (after a loud message).
pub fn nats_url() -> Option<String> {
    let url =
        std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string());
    let addr = url.trim_start_matches("nats://").to_string();
    let reachable = addr
        .parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        Some(url)
    } else {
        skip_or_fail(format!("NATS at {url} is unreachable"));
        None
    }
}

/// A namespace no other test run uses, for `AGENT_BUS_NAMESPACE`.
pub fn unique_namespace() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

fn nats_server_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A private `nats-server -js` on a free loopback port, killed on drop.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one storing JetStream data under `dir`; `None` (after a loud message) when no
    /// `nats-server` binary is installed and NATS is not required.
    pub fn start(dir: &Path) -> Option<NatsServer> {
        let Some(bin) = nats_server_binary() else {
            skip_or_fail(
                "no nats-server binary (install nats-server or set NATS_SERVER_BIN)".into(),
            );
            return None;
        };
        let ports_dir = dir.join("nats-ports");
        std::fs::create_dir_all(&ports_dir).expect("create the ports file directory");
        let store = dir.join("nats-js");
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let ports_file = ports_dir.join(format!(
            "{}_{}.ports",
            bin.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nats-server"),
            child.id()
        ));
        // The server writes the file once it listens; polled with a deadline.
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Some(port) = client_port(&ports_file) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break port;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited with {status} before listening");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not listening in 15 s (no ports file {})",
                ports_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(NatsServer {
            port,
            child: Some(child),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client port in a `nats-server` ports file (`{"nats": ["nats://127.0.0.1:PORT"], ...}`),
/// once it is written whole.
fn client_port(file: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_file_gives_the_client_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nats-server_1.ports");
        assert_eq!(client_port(&file), None);
        std::fs::write(
            &file,
            r#"{"nats":["nats://127.0.0.1:43117"],"monitoring":[]}"#,
        )
        .unwrap();
        assert_eq!(client_port(&file), Some(43117));
        std::fs::write(&file, r#"{"nats":["#).unwrap();
        assert_eq!(client_port(&file), None, "a file being written");
    }
}
