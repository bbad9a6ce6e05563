//! A plain static file server for the download tests: python3's `http.server`
//! bound to 127.0.0.1, serving a temp directory the test fills. The child this
//! harness spawns is the whole server: [`FileServer::stop`] and `Drop` kill it
//! by its own PID and reap it.

use super::{free_port, stop_child};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `python3 -m http.server`; stopped and reaped on drop.
pub struct FileServer {
    /// The directory served, when the server made it (else the caller's).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl FileServer {
    /// Starts a server of an empty directory on a free port of 127.0.0.1 and
    /// returns once it accepts connections.
    pub fn start() -> FileServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        FileServer::spawn(Some(dir), root)
    }

    /// Starts a server of the caller's directory `root`.
    pub fn serve(root: &Path) -> FileServer {
        FileServer::spawn(None, root.to_path_buf())
    }

    fn spawn(dir: Option<tempfile::TempDir>, root: PathBuf) -> FileServer {
        super::require("python3");
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot run python3");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            // 10 ms apart: 30 s on a loaded machine.
            for _ in 0..3000 {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: try another
                }
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    return FileServer {
                        dir,
                        root,
                        child: Some(child),
                        port,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            stop_child(&mut child);
        }
        panic!("python3 -m http.server found no free port on 127.0.0.1");
    }

    /// `http://127.0.0.1:PORT`, without a trailing `/`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Serves `bytes` at `/<path>` (replacing what was there).
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let p = self.root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server (its own PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}
