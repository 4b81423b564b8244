//! The one HTTP client used for upstream requests and modules' outbound calls: no
//! default headers, no redirect following (D10), no decompression (D11), connect timeout
//! (D12), HTTP/1.1 and HTTP/2 over rustls with the Mozilla root set.

use std::time::Duration;

use axum::body::Body;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The shared client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Build the client.
pub fn build(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

thread_local! {
    /// A serving worker's own client (see [`crate::worker`]).
    static WORKER: std::cell::OnceCell<HttpClient> = const { std::cell::OnceCell::new() };
}

/// Give this thread a client of its own, with its own connection pool: serving workers do,
/// so a request and its pooled upstream connection share a thread. Once per thread.
pub fn install_for_this_thread(client: HttpClient) {
    WORKER.with(|c| {
        let _ = c.set(client);
    });
}

/// Send `request` upstream with this thread's own client if it has one, else `shared`.
pub fn request(
    shared: &HttpClient,
    request: http::Request<Body>,
) -> hyper_util::client::legacy::ResponseFuture {
    WORKER.with(|c| c.get().unwrap_or(shared).request(request))
}
