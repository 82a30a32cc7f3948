//! The plugin's HTTP/1.1 server on its Unix socket: Docker POSTs one JSON
//! document per call to `/Plugin.Activate`, `/NetworkDriver.CreateNetwork`
//! ... over keep-alive connections. hyper on a current-thread tokio runtime
//! in a thread of its own; each call is answered on tokio's blocking pool,
//! since it waits on the controller's lock and does netlink work.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{answer, Api};

/// The largest request body taken; Docker's are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;
/// What Docker's plugin client sends and expects.
const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The running plugin server; dropping it removes the socket, so Docker
/// stops finding a plugin that no longer answers.
pub struct PluginServer {
    path: PathBuf,
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600, root only; a stale socket is replaced, any
/// other file refused) and serves it from a new thread for the life of
/// the process.
pub fn spawn(path: &Path, api: Arc<dyn Api>) -> io::Result<PluginServer> {
    let listener = crate::control::server::bind_private(path)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("docker-plugin".into())
        .spawn(move || runtime.block_on(serve(listener, api)))?;
    Ok(PluginServer {
        path: path.to_owned(),
    })
}

async fn serve(listener: std::os::unix::net::UnixListener, api: Arc<dyn Api>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "docker plugin socket unusable; not serving");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "docker plugin accept failed");
                continue;
            }
        };
        let api = api.clone();
        tokio::task::spawn(async move {
            let service = service_fn(move |req| call(api.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "docker plugin connection ended");
            }
        });
    }
}

async fn call(
    api: Arc<dyn Api>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.uri().path().trim_start_matches('/').to_owned();
    let (status, body) = if req.method() != Method::POST {
        (
            405,
            json!({"Err": format!("vswitch: {} {method}: plugin calls are POSTs", req.method())}),
        )
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let m = method.clone();
                tokio::task::spawn_blocking(move || answer(&*api, &m, &bytes))
                    .await
                    .unwrap_or_else(|e| (500, json!({"Err": format!("vswitch: {method}: {e}")})))
            }
            Err(e) => (
                400,
                json!({"Err": format!("vswitch: {method}: cannot read the request: {e}")}),
            ),
        }
    };
    let text = serde_json::to_vec(&body).expect("JSON values serialize");
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response");
    Ok(response)
}
