//! The HTTP client used for upstream requests and modules' outbound calls: no default
//! headers, no redirect following (D10), no decompression (D11), connect timeout (D12),
//! HTTP/1.1 and HTTP/2 over rustls with the Mozilla root set. Serving threads send
//! upstream requests through a connection pool of their own ([`pool`]); other threads,
//! and modules' outbound calls, use hyper-util's pooled client with the same connector.

pub mod pool;

use std::cell::OnceCell;
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use pool::SendError;

/// How upstream connections are made: TCP (with the connect timeout), then TLS for https.
pub type Connector = HttpsConnector<HttpConnector>;

/// The shared client type.
pub type HttpClient = Client<Connector, Body>;

/// An upstream response's body.
pub type UpstreamBody = pool::PooledBody<Body, Connector>;

/// How long an idle upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connector, for `connect_timeout`.
pub fn connector(connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// Build the shared client.
pub fn build(connect_timeout: Duration) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector(connect_timeout))
}

thread_local! {
    /// A serving worker's own connection pool (see [`crate::worker`]).
    static WORKER: OnceCell<pool::Pool<Body, Connector>> = const { OnceCell::new() };
}

/// Give this thread a connection pool of its own: serving workers do, so a request and
/// its upstream connection share a thread. Once per thread.
pub fn install_for_this_thread(connect_timeout: Duration) {
    WORKER.with(|c| {
        let _ = c.set(pool::Pool::new(
            connector(connect_timeout),
            POOL_IDLE_TIMEOUT,
        ));
    });
}

/// Send `request` (absolute URI) upstream through this thread's own pool if it has one,
/// else through `shared`.
pub async fn request(
    shared: &HttpClient,
    request: http::Request<Body>,
) -> Result<http::Response<UpstreamBody>, SendError> {
    if WORKER.with(|c| c.get().is_some()) {
        pool::send(&WORKER, request).await
    } else {
        Ok(shared
            .request(request)
            .await?
            .map(pool::PooledBody::unpooled))
    }
}
