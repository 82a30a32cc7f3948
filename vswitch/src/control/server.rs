//! The API server: a Unix stream socket, one JSON request per line, one
//! JSON response per line. Each connection gets a thread; requests are
//! applied one at a time under the controller's lock (the control path,
//! never the packet path).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::api::{ApiError, ErrorKind, Request, Response};

use super::Controller;

/// Longest request line accepted; longer ones are refused unread.
const MAX_REQUEST: u64 = 1 << 20;

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
}

/// Wakes a server blocked in `accept` so it can stop.
#[derive(Clone)]
pub struct StopHandle {
    fd: i32,
    stopping: Arc<AtomicBool>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on the listener's fd, which outlives the server
        // loop; it only makes the blocked accept() return.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

impl Server {
    /// Binds the socket with mode 0600 (root only). Refuses to start if
    /// another daemon answers on the path; removes a stale socket file.
    pub fn bind(path: &Path) -> io::Result<Server> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another vswitchd is serving {}", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        // Bind with a umask so the socket is never reachable by others, not
        // even between bind and chmod.
        // SAFETY: umask has no memory effects; the daemon is single-threaded
        // while binding.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            fd: self.listener.as_raw_fd(),
            stopping: self.stopping.clone(),
        }
    }

    /// Serves until [`StopHandle::stop`] is called.
    pub fn run(self, controller: Arc<Mutex<Controller>>) {
        for conn in self.listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok(stream) => {
                    let ctl = controller.clone();
                    let spawned = std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || serve_connection(stream, &ctl));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start connection thread");
                    }
                }
                Err(e) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    tracing::warn!(error = %e, "accept failed");
                }
            }
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn serve_connection(stream: UnixStream, controller: &Mutex<Controller>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_REQUEST).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let too_long = line.last() != Some(&b'\n') && line.len() as u64 >= MAX_REQUEST;
        let response = if too_long {
            Response::Error(ApiError::new(
                ErrorKind::BadRequest,
                None,
                format!("request longer than {MAX_REQUEST} bytes"),
            ))
        } else {
            answer(&line, controller)
        };
        let mut text = serde_json::to_vec(&response).expect("responses serialize");
        text.push(b'\n');
        if writer.write_all(&text).is_err() || too_long {
            return;
        }
    }
}

/// Decodes and applies one request line.
pub fn answer(line: &[u8], controller: &Mutex<Controller>) -> Response {
    let text = line.trim_ascii();
    if text.is_empty() {
        return Response::Error(ApiError::new(ErrorKind::BadRequest, None, "empty request"));
    }
    match serde_json::from_slice::<Request>(text) {
        Ok(req) => {
            tracing::debug!(request = ?req, "api request");
            let mut ctl = controller
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ctl.handle(req)
        }
        Err(e) => Response::Error(ApiError::new(
            ErrorKind::BadRequest,
            None,
            format!("malformed request: {e}"),
        )),
    }
}
