//! The API server: a Unix stream socket, one JSON request per line, one
//! JSON response per line. Each connection gets a thread, up to
//! [`MAX_CONNECTIONS`] at once; past that a new connection is answered with
//! one `Unavailable` error and closed, and a connection idle for
//! [`IDLE_TIMEOUT`] is closed, so abandoned clients cannot hold the slots.
//! Requests are applied one at a time under the controller's lock (the
//! control path, never the packet path); nothing done under it waits on
//! another process (namespace paths are opened without blocking).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{ApiError, ErrorKind, Request, Response};

use super::Controller;

/// Longest request line accepted; longer ones are refused unread.
const MAX_REQUEST: u64 = 1 << 20;
/// Connections served at once. The CLI uses one per command; this leaves
/// room for scripts and plugins (Docker, CNI) in parallel.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server waits for a slow client to take an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// another daemon answers on the path, or if the path is anything but
    /// a socket (a mistyped `--socket` must not delete a file); replaces
    /// only a stale socket, one nobody listens on.
    pub fn bind(path: &Path) -> io::Result<Server> {
        Ok(Server {
            listener: bind_private(path)?,
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
        let open = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok(stream) => {
                    if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        refuse_busy(stream);
                        continue;
                    }
                    let ctl = controller.clone();
                    let slot = Slot::take(&open);
                    let spawned =
                        std::thread::Builder::new()
                            .name("api-conn".into())
                            .spawn(move || {
                                let _slot = slot;
                                serve_connection(stream, &ctl)
                            });
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

/// Binds a Unix socket with mode 0600 (root only), as [`Server::bind`]
/// does for the API; the Docker plugin's socket is bound the same way.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another vswitchd is serving {}", path.display()),
                ))
            }
            // Nobody listens: a stale socket of a daemon that died.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)?,
            Err(e) => return Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
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
    Ok(listener)
}

/// One connection's share of [`MAX_CONNECTIONS`], given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::SeqCst);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Past the cap: one error line, then the connection is closed. Written on
/// the accepting thread, so it must never wait on the client.
fn refuse_busy(mut stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let response = Response::Error(ApiError::new(
        ErrorKind::Unavailable,
        None,
        format!("vswitchd is serving {MAX_CONNECTIONS} connections already; try again"),
    ));
    let mut text = serde_json::to_vec(&response).expect("responses serialize");
    text.push(b'\n');
    let _ = stream.write_all(&text);
}

fn serve_connection(stream: UnixStream, controller: &Mutex<Controller>) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
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
    match decode(text) {
        Ok(req) => {
            tracing::debug!(request = ?req, "api request");
            let mut ctl = controller
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ctl.handle(req)
        }
        Err(e) => Response::Error(e),
    }
}

/// Decodes a request; an error names the JSON path of the field at fault
/// (`Args.Name`), when there is one, as `field`.
pub fn decode(text: &[u8]) -> Result<Request, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let req: Request = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        ApiError::new(
            ErrorKind::BadRequest,
            field.as_deref(),
            format!("malformed request: {}", e.into_inner()),
        )
    })?;
    // Trailing bytes after the request are as malformed as a bad field.
    de.end().map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            None,
            format!("malformed request: {e}"),
        )
    })?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_name_the_field() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                r#"{"Op":"NetworkCreate","Args":{"Name":5}}"#,
                Some("Args.Name"),
                "expected a string",
            ),
            (
                r#"{"Op":"NetworkCreate","Args":{"Name":"n","Mtu":"big"}}"#,
                Some("Args.Mtu"),
                "expected u32",
            ),
            (
                r#"{"Op":"NetworkCreate","Args":{"Name":"n","Subnets":["10.0.0.0/24",7]}}"#,
                Some("Args.Subnets[1]"),
                "expected a string",
            ),
            (
                r#"{"Op":"EndpointCreate","Args":{"Name":"e","AllowSpoofing":"yes"}}"#,
                Some("Args.AllowSpoofing"),
                "expected a boolean",
            ),
            (
                r#"{"Op":"NetworkCreate","Args":{"Name":"n","Options":{"mtu":1}}}"#,
                Some("Args.Options.mtu"),
                "expected a string",
            ),
            (
                r#"{"Op":"NetworkCreate","Args":{"Nmae":"n"}}"#,
                Some("Args.Nmae"),
                "unknown field",
            ),
            (r#"{"Op":"Fly"}"#, Some("Op"), "unknown variant"),
        ];
        for (text, field, message) in cases {
            let e = decode(text.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{text}");
            assert_eq!(e.field.as_deref(), *field, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        assert!(decode(br#"{"Op":"NetworkList"} x"#).is_err());
        assert!(decode(br#"{"Op":"NetworkList"}"#).is_ok());
    }
}
