//! One request/response exchange with `vswitchd` over its Unix socket: one
//! JSON line each way (see `vswitch_api`).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vswitch_api::{Request, Response};

/// How long to wait for an answer. Generous, because creating an endpoint
/// does netlink work in the daemon, but finite so a wedged daemon does not
/// hang scripts forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request` to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, &e))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .context("setsockopt(SO_RCVTIMEO)")?;

    let mut line = serde_json::to_string(request).context("cannot encode request")?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| anyhow!("cannot send to {}: {}", socket.display(), reason(&e)))?;

    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) => bail!(
            "vswitchd at {} closed the connection without replying",
            socket.display()
        ),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            bail!(
                "vswitchd at {} did not reply within {}s",
                socket.display(),
                REPLY_TIMEOUT.as_secs()
            )
        }
        Err(e) => bail!("cannot read from {}: {}", socket.display(), reason(&e)),
    }
    serde_json::from_str(&reply).map_err(|e| anyhow!("malformed reply from daemon: {e}"))
}

fn connect_error(socket: &Path, err: &io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => " (is vswitchd running?)",
        io::ErrorKind::PermissionDenied => " (run as root?)",
        _ => "",
    };
    anyhow!(
        "cannot connect to {}: {}{hint}",
        socket.display(),
        reason(err)
    )
}

/// The OS's description of an error, without std's "(os error N)" suffix,
/// which means nothing to the user.
pub(crate) fn reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread;
    use vswitch_api::{ApiError, ErrorKind, Reply};

    /// A socket path unique to this test, removed when dropped.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("vswitchctl-{}-{tag}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            TempSocket(path)
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Serves one connection: checks the request line, writes `answer`.
    fn serve_once(
        listener: UnixListener,
        expect: String,
        answer: &'static str,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert_eq!(line, expect);
            (&stream).write_all(answer.as_bytes()).unwrap();
        })
    }

    #[test]
    fn missing_socket_names_path_and_hint() {
        let sock = TempSocket::new("missing");
        let err = call(&sock.0, &Request::NetworkList)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot connect to {}: No such file or directory (is vswitchd running?)",
                sock.0.display()
            )
        );
    }

    #[test]
    fn exchanges_one_json_line() {
        let sock = TempSocket::new("ok");
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = serve_once(
            listener,
            "{\"Op\":\"NetworkList\"}\n".to_owned(),
            "{\"Ok\":{\"Networks\":[]}}\n",
        );
        let resp = call(&sock.0, &Request::NetworkList).unwrap();
        server.join().unwrap();
        assert_eq!(resp, Response::Ok(Reply::Networks(vec![])));
    }

    #[test]
    fn error_reply_is_returned() {
        let sock = TempSocket::new("err");
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = serve_once(
            listener,
            "{\"Op\":\"NetworkRemove\",\"Args\":{\"Name\":\"x\"}}\n".to_owned(),
            "{\"Error\":{\"Kind\":\"NotFound\",\"Field\":\"Name\",\"Message\":\"no network x\"}}\n",
        );
        let resp = call(&sock.0, &Request::NetworkRemove { name: "x".into() }).unwrap();
        server.join().unwrap();
        assert_eq!(
            resp,
            Response::Error(ApiError::new(
                ErrorKind::NotFound,
                Some("Name"),
                "no network x"
            ))
        );
    }

    #[test]
    fn hang_up_and_garbage_are_errors() {
        let sock = TempSocket::new("eof");
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = serve_once(listener, "{\"Op\":\"PortList\"}\n".to_owned(), "");
        let err = call(&sock.0, &Request::PortList).unwrap_err().to_string();
        server.join().unwrap();
        assert!(
            err.contains("closed the connection without replying"),
            "{err}"
        );

        let sock = TempSocket::new("garbage");
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = serve_once(listener, "{\"Op\":\"PortList\"}\n".to_owned(), "hello\n");
        let err = call(&sock.0, &Request::PortList).unwrap_err().to_string();
        server.join().unwrap();
        assert!(err.starts_with("malformed reply from daemon"), "{err}");
    }

    #[test]
    fn reason_drops_os_error_number() {
        let err = io::Error::from_raw_os_error(13);
        assert_eq!(reason(&err), "Permission denied");
    }
}
