//! Prometheus metrics: the text exposition format (version 0.0.4) and the
//! small HTTP/1.1 server `vswitchd --metrics ADDRESS` answers scrapes with.
//!
//! [`Exposition`] collects samples by family and renders them with one
//! `# HELP` and one `# TYPE` line per family, families sorted by name and
//! samples by their labels, so two scrapes of an idle switch are
//! byte-identical. What is measured is the control plane's business
//! (`control/metrics.rs`); this module knows only the format and HTTP.
//!
//! The server answers `GET /metrics` (and `HEAD`) with 200, any other path
//! with 404 and any other method with 405, then closes the connection. A
//! request head is read for [`READ_TIMEOUT`] in all and up to
//! [`MAX_REQUEST_HEAD`] bytes; [`MAX_CONNECTIONS`] are served at once and
//! past that a connection is answered 503 and closed. Rendering runs the
//! caller's closure, which takes the controller's lock like any request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `Content-Type` of the text format, as Prometheus' own clients send it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapes served at once. Prometheus scrapes one at a time; this leaves
/// room for a second scraper and a `curl` without letting a crowd queue on
/// the controller's lock.
pub const MAX_CONNECTIONS: usize = 4;
/// Longest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how much, a closing connection's input is drained.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

// ---- the text format ----

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (resets when the daemon restarts); named `*_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricType {
    fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// The samples of one metric name.
#[derive(Debug)]
pub struct Family {
    kind: MetricType,
    help: &'static str,
    /// Label sets (name, value) in the order given, and their values.
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    /// Adds a sample; `labels` are (name, value), names fixed by the code.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: u64) -> &mut Family {
        debug_assert!(
            labels.iter().all(|(n, _)| is_label_name(n)),
            "bad label name in {labels:?}"
        );
        let labels = labels.iter().map(|&(n, v)| (n, v.to_owned())).collect();
        self.samples.push((labels, value));
        self
    }
}

/// Metric families being collected for one scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    /// The family `name`, created on first use. Asking again for the same
    /// name gives the same family (so its HELP and TYPE are written once);
    /// the type and help must be the same each time.
    pub fn family(
        &mut self,
        name: &'static str,
        kind: MetricType,
        help: &'static str,
    ) -> &mut Family {
        debug_assert!(is_metric_name(name), "bad metric name {name}");
        debug_assert_eq!(
            kind == MetricType::Counter,
            name.ends_with("_total"),
            "{name}: counters, and only counters, end in _total"
        );
        let family = self.families.entry(name).or_insert_with(|| Family {
            kind,
            help,
            samples: Vec::new(),
        });
        debug_assert!(
            family.kind == kind && family.help == help,
            "{name} declared twice, differently"
        );
        family
    }

    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, MetricType::Counter, help)
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, MetricType::Gauge, help)
    }

    /// The text format. Families without samples are left out, as
    /// Prometheus' client libraries do.
    pub fn render(mut self) -> String {
        let mut out = String::new();
        for (name, family) in &mut self.families {
            if family.samples.is_empty() {
                continue;
            }
            family.samples.sort();
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.name());
            for (labels, value) in &family.samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (label, text)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{label}=\"{}\"", escape_label_value(text));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// A label value as the format quotes it: backslash, double quote and
/// line feed escaped.
pub fn escape_label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped (quotes are not).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

// ---- HTTP ----

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`; `body` is false for `HEAD`.
    Metrics {
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request by its request line (`METHOD TARGET HTTP/x.y`).
/// `/metrics` may carry a query string, which is ignored.
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics { body }
    } else {
        Route::NotFound
    }
}

/// A bound metrics listener, not serving yet: bind early so that a taken
/// address stops the daemon at startup.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(addr)?,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on a thread of its own, for the life of the process.
    /// `render` produces the body, or the reason it cannot (answered 500).
    pub fn spawn<F>(self, render: F) -> io::Result<JoinHandle<()>>
    where
        F: Fn() -> Result<String, String> + Send + Sync + 'static,
    {
        let render = Arc::new(render);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || self.run(render))
    }

    fn run<F>(self, render: Arc<F>)
    where
        F: Fn() -> Result<String, String> + Send + Sync + 'static,
    {
        let open = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            };
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                refuse_busy(stream);
                continue;
            }
            let slot = Slot(open.clone());
            let render = render.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    serve(stream, &*render);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a metrics connection thread");
            }
        }
    }
}

/// One connection's share of [`MAX_CONNECTIONS`], given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Past the cap: 503 and close, from the accepting thread, so it must
/// never wait on the client.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(&response(
        "503 Service Unavailable",
        "text/plain; charset=utf-8",
        b"too many metrics connections; try again\n",
        true,
    ));
    let _ = stream.shutdown(Shutdown::Write);
    // What the request sent so far, read so that closing does not reset
    // the connection before the client reads the answer.
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

fn serve(mut stream: TcpStream, render: &dyn Fn() -> Result<String, String>) {
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let answer = match read_head(&mut stream) {
        Ok(head) => match route(&head) {
            Route::Metrics { body } => match render() {
                Ok(text) => response("200 OK", CONTENT_TYPE, text.as_bytes(), body),
                Err(why) => {
                    tracing::warn!(error = %why, "metrics not gathered");
                    plain("500 Internal Server Error", &format!("{why}\n"))
                }
            },
            Route::NotFound => plain("404 Not Found", "metrics are at /metrics\n"),
            Route::MethodNotAllowed => plain("405 Method Not Allowed", "GET or HEAD only\n"),
            Route::BadRequest => plain("400 Bad Request", "not an HTTP/1 request line\n"),
        },
        Err(HeadError::TooLong) => plain(
            "431 Request Header Fields Too Large",
            &format!("request head longer than {MAX_REQUEST_HEAD} bytes\n"),
        ),
        // Timed out, reset or closed early: nobody to answer.
        Err(HeadError::Io) => return,
    };
    let _ = stream.write_all(&answer);
    close_gently(stream);
}

/// Closes after the answer without resetting the connection: closing a
/// socket with unread input makes the kernel send a reset, which can
/// destroy the answer before the client reads it. So: end our side, then
/// read and discard what the client still sends until it closes too, for
/// [`LINGER`] and [`LINGER_BYTES`] at most.
fn close_gently(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

enum HeadError {
    TooLong,
    Io,
}

/// Reads up to the blank line that ends a request head, within
/// [`READ_TIMEOUT`] in all (not per read: a client trickling bytes cannot
/// hold its slot for long).
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Io);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        if head_complete(&head) {
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

fn plain(status: &str, text: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", text.as_bytes(), true)
}

fn response(status: &str, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("one\ntwo"), "one\\ntwo");
        assert_eq!(escape_label_value("plain-name.1"), "plain-name.1");
        let mut e = Exposition::default();
        e.gauge("t_g", "A gauge.")
            .sample(&[("name", "x\"y\\z\nw")], 1);
        assert_eq!(
            e.render(),
            "# HELP t_g A gauge.\n# TYPE t_g gauge\nt_g{name=\"x\\\"y\\\\z\\nw\"} 1\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_only() {
        assert_eq!(escape_help("a \"b\" c\\d\ne"), "a \"b\" c\\\\d\\ne");
    }

    #[test]
    fn help_and_type_once_per_family_and_sorted() {
        let mut e = Exposition::default();
        e.counter("t_b_total", "B.").sample(&[("port", "z")], 3);
        e.gauge("t_a", "A.").sample(&[], 7);
        // The same family asked for again, from elsewhere.
        e.counter("t_b_total", "B.").sample(&[("port", "a")], 5);
        e.counter("t_b_total", "B.").sample(&[("port", "m")], 0);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP t_a A.\n# TYPE t_a gauge\nt_a 7\n\
             # HELP t_b_total B.\n# TYPE t_b_total counter\n\
             t_b_total{port=\"a\"} 5\nt_b_total{port=\"m\"} 0\nt_b_total{port=\"z\"} 3\n"
        );
        assert_eq!(text.matches("# HELP t_b_total").count(), 1);
        assert_eq!(text.matches("# TYPE t_b_total").count(), 1);
    }

    #[test]
    fn output_does_not_depend_on_insertion_order() {
        let build = |order: &[usize]| {
            let rows = [("p1", "n1", 1), ("p2", "n1", 2), ("p1", "n2", 3)];
            let mut e = Exposition::default();
            for &i in order {
                let (p, n, v) = rows[i];
                e.counter("t_x_total", "X.")
                    .sample(&[("port", p), ("network", n)], v);
                e.gauge("t_y", "Y.")
                    .sample(&[("network", n), ("port", p)], v);
            }
            e.render()
        };
        let first = build(&[0, 1, 2]);
        assert_eq!(first, build(&[2, 0, 1]));
        assert_eq!(first, build(&[1, 2, 0]));
        let t_x: Vec<&str> = first
            .lines()
            .filter(|l| l.starts_with("t_x_total{"))
            .collect();
        assert_eq!(
            t_x,
            [
                "t_x_total{port=\"p1\",network=\"n1\"} 1",
                "t_x_total{port=\"p1\",network=\"n2\"} 3",
                "t_x_total{port=\"p2\",network=\"n1\"} 2",
            ]
        );
    }

    #[test]
    fn empty_families_are_left_out() {
        let mut e = Exposition::default();
        e.counter("t_none_total", "Nothing yet.");
        e.gauge("t_up", "Up.").sample(&[], 1);
        assert_eq!(e.render(), "# HELP t_up Up.\n# TYPE t_up gauge\nt_up 1\n");
    }

    #[test]
    #[should_panic(expected = "_total")]
    #[cfg(debug_assertions)]
    fn a_counter_without_total_is_a_bug() {
        Exposition::default().counter("t_bytes", "Bytes.");
    }

    #[test]
    fn names() {
        assert!(is_metric_name("vswitch_port_rx_packets_total"));
        assert!(!is_metric_name("9lives"));
        assert!(!is_metric_name("a-b"));
        assert!(is_label_name("owner_kind"));
        assert!(!is_label_name("__reserved"));
        assert!(!is_label_name("a.b"));
    }

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics/ HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("DELETE /x HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET /metrics HTTP/2\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET  /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
    }

    fn fetch(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_over_tcp() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        server.spawn(|| Ok("t_up 1\n".to_owned())).unwrap();
        let ok = fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("\r\nContent-Length: 7\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nt_up 1\n"), "{ok}");
        let head = fetch(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        assert!(fetch(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = fetch(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert!(fetch(addr, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn a_render_failure_is_a_500() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        server
            .spawn(|| Err("datapath thread has stopped".into()))
            .unwrap();
        let answer = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
        assert!(answer.contains("datapath thread has stopped"));
    }

    #[test]
    fn connections_are_capped_and_silent_ones_let_go() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        server.spawn(|| Ok("t_up 1\n".to_owned())).unwrap();
        // Clients that connect and say nothing hold every slot...
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut refused = false;
        while Instant::now() < deadline && !refused {
            refused = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 ");
        }
        assert!(refused, "a connection past the cap was served");
        // ...until the read timeout closes them.
        std::thread::sleep(READ_TIMEOUT + Duration::from_millis(500));
        let ok = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
        drop(silent);
    }
}
