//! A serving thread's own pool of upstream connections.
//!
//! hyper-util's pooled client serves any thread: a lock around the pool, its key hashed
//! (SipHash, a byte at a time) on every checkout and every return, and for an HTTP/1
//! request whose response has a body, a task spawned to wait for the connection to be idle
//! again before it goes back. A serving thread's requests and their upstream connections
//! never leave that thread ([`crate::worker`]), so none of that is needed here: the pool
//! is a list of idle connections per upstream in a `RefCell`, and an HTTP/1 connection
//! goes back into it from the response body that used it, once that body has been read
//! to its end. A body dropped before its end takes its connection with it (hyper closes
//! it: what is left of the response cannot be skipped safely).
//!
//! What hyper-util's client does and this pool does too: one HTTP/2 connection per
//! upstream shared by every request, when TLS negotiates it; `Host` set on HTTP/1 from the
//! URI (unless the request has one) and the URI sent in origin form; a request that a
//! reused connection failed before sending any of it is retried on another connection;
//! idle connections are dropped after the idle timeout. Outbound calls made by modules
//! keep using hyper-util's client, from any thread.

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;

/// A boxed error with its causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed. The messages match hyper-util's for the same failures.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The URI has no scheme or no authority.
    #[error("client error (the upstream URI has no scheme or host)")]
    Uri,
    /// Connecting (TCP, then TLS) failed or timed out.
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("client error (SendRequest)")]
    Send(#[source] hyper::Error),
    /// hyper-util's client (threads without a pool of their own).
    #[error(transparent)]
    Shared(#[from] hyper_util::client::legacy::Error),
}

/// A request body the pool can send: what hyper's client connections need of it.
pub trait RequestBody: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// A connector the pool can use (hyper-util's connector interface): it makes a connection,
/// TLS or not, and says whether HTTP/2 was negotiated.
pub trait Connect:
    tower::Service<
        Uri,
        Response: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static,
        Future: Send,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<C> Connect for C where
    C: tower::Service<
            Uri,
            Response: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static,
            Future: Send,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static
{
}

/// Where a thread keeps its pool: the pool's bodies find their way home through it.
pub type Home<B, C> = &'static LocalKey<OnceCell<Pool<B, C>>>;

/// Idle HTTP/1 connections kept per upstream and thread; beyond that they are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// One thread's connections. `C` connects (hyper-util's connector interface), `B` is the
/// request body.
pub struct Pool<B, C> {
    connector: C,
    idle_timeout: Duration,
    upstreams: RefCell<Vec<Upstream<B>>>,
}

struct Upstream<B> {
    scheme: Scheme,
    authority: Authority,
    /// Idle HTTP/1 connections, the most recently used at the back.
    idle: VecDeque<(http1::SendRequest<B>, Instant)>,
    /// The shared HTTP/2 connection, if the upstream negotiated HTTP/2.
    h2: Option<http2::SendRequest<B>>,
}

impl<B> Upstream<B> {
    fn is(&self, scheme: &Scheme, authority: &Authority) -> bool {
        self.authority == *authority && self.scheme == *scheme
    }
}

enum Conn<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

impl<B, C> Pool<B, C> {
    /// An empty pool that connects with `connector` and closes connections idle for longer
    /// than `idle_timeout`.
    pub fn new(connector: C, idle_timeout: Duration) -> Self {
        Self {
            connector,
            idle_timeout,
            upstreams: RefCell::new(Vec::new()),
        }
    }

    /// Idle HTTP/1 connections and HTTP/2 connections held, for tests and diagnostics.
    pub fn idle_count(&self) -> usize {
        self.upstreams
            .borrow()
            .iter()
            .map(|u| u.idle.len() + usize::from(u.h2.is_some()))
            .sum()
    }

    /// A connection to `scheme://authority` that is still open, if one is idle.
    fn checkout(&self, scheme: &Scheme, authority: &Authority) -> Option<Conn<B>> {
        let mut upstreams = self.upstreams.borrow_mut();
        let up = upstreams.iter_mut().find(|u| u.is(scheme, authority))?;
        if let Some(h2) = &up.h2 {
            if !h2.is_closed() {
                return Some(Conn::H2(h2.clone()));
            }
            up.h2 = None;
        }
        let now = Instant::now();
        while up
            .idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) > self.idle_timeout)
        {
            up.idle.pop_front();
        }
        while let Some((tx, _)) = up.idle.pop_back() {
            if !tx.is_closed() {
                return Some(Conn::H1(tx));
            }
        }
        None
    }

    fn upstream<'a>(
        upstreams: &'a mut Vec<Upstream<B>>,
        scheme: &Scheme,
        authority: &Authority,
    ) -> &'a mut Upstream<B> {
        let at = match upstreams.iter().position(|u| u.is(scheme, authority)) {
            Some(at) => at,
            None => {
                upstreams.push(Upstream {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    idle: VecDeque::new(),
                    h2: None,
                });
                upstreams.len() - 1
            }
        };
        &mut upstreams[at]
    }

    /// Take back an HTTP/1 connection whose last response has been read to its end.
    fn put_back(&self, scheme: &Scheme, authority: &Authority, tx: http1::SendRequest<B>) {
        if tx.is_closed() {
            return;
        }
        let mut upstreams = self.upstreams.borrow_mut();
        let up = Self::upstream(&mut upstreams, scheme, authority);
        if up.idle.len() < MAX_IDLE_PER_UPSTREAM {
            up.idle.push_back((tx, Instant::now()));
        }
    }

    fn share_h2(&self, scheme: &Scheme, authority: &Authority, tx: &http2::SendRequest<B>) {
        let mut upstreams = self.upstreams.borrow_mut();
        Self::upstream(&mut upstreams, scheme, authority).h2 = Some(tx.clone());
    }
}

/// A response body that returns its HTTP/1 connection to the pool once read to its end.
pub struct PooledBody<B: 'static, C: 'static> {
    inner: Incoming,
    back: Option<Back<B, C>>,
}

struct Back<B: 'static, C: 'static> {
    home: Home<B, C>,
    scheme: Scheme,
    authority: Authority,
    tx: http1::SendRequest<B>,
    /// Returns the connection once it is ready for another request (see
    /// [`return_when_ready`]); a pointer, since `Drop` cannot require `B: Send`.
    later: fn(Back<B, C>),
}

impl<B: 'static, C: 'static> Back<B, C> {
    fn put(self) {
        // During thread teardown the pool may be gone; the connection then just closes.
        let _ = self.home.try_with(|pool| {
            if let Some(pool) = pool.get() {
                pool.put_back(&self.scheme, &self.authority, self.tx);
            }
        });
    }
}

/// The response was read to its end but the connection is not ready for another request:
/// hyper is still writing the request body (an upstream that answered early, e.g. a 401 to
/// an upload). Return it only once it is ready, as hyper-util does, so the next request
/// does not wait behind that body; a connection that closes instead is not returned.
fn return_when_ready<B, C>(mut back: Back<B, C>)
where
    B: Body + Send + 'static,
    C: 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if back.tx.ready().await.is_ok() {
            back.put();
        }
    });
}

impl<B: 'static, C: 'static> std::fmt::Debug for PooledBody<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("inner", &self.inner)
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

impl<B: 'static, C: 'static> PooledBody<B, C> {
    /// A body that has no connection to return (HTTP/2, hyper-util's client).
    pub fn unpooled(inner: Incoming) -> Self {
        Self { inner, back: None }
    }

    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            // Usually ready at once: hyper's connection task reads the body's end and asks
            // for the next request in the same poll, before this body sees the end.
            if back.tx.is_ready() {
                back.put();
            } else {
                (back.later)(back);
            }
        }
    }
}

impl<B: 'static, C: 'static> Body for PooledBody<B, C> {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: 'static, C: 'static> Drop for PooledBody<B, C> {
    fn drop(&mut self) {
        // A body with nothing left to read (an empty one is never polled) frees its
        // connection; one dropped half-read does not, and hyper closes the connection.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

/// Send `request` (absolute URI) on a connection from `home`'s pool, which must be
/// installed on this thread.
pub async fn send<B, C>(
    home: Home<B, C>,
    mut request: Request<B>,
) -> Result<Response<PooledBody<B, C>>, SendError>
where
    B: RequestBody,
    C: Connect,
{
    let uri = request.uri().clone();
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(SendError::Uri);
    };
    let origin = Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    loop {
        let idle = with_pool(home, |p| p.checkout(&scheme, &authority)).flatten();
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            // Boxed: connecting (and the HTTP/2 handshake) is rare and its future is
            // large; inline, it would grow every request's future, which hyper moves.
            None => Box::pin(connect(home, &uri, &scheme, &authority)).await?,
        };
        let (mut failed, host) = match conn {
            Conn::H2(mut tx) => match tx.try_send_request(request).await {
                Ok(response) => return Ok(response.map(PooledBody::unpooled)),
                Err(e) => (e, false),
            },
            Conn::H1(mut tx) => {
                if let Err(e) = tx.ready().await {
                    if reused {
                        // Closed while idle: not an attempt; try the next one.
                        continue;
                    }
                    // A new connection the upstream closed at once: an error, not a loop.
                    return Err(SendError::Send(e));
                }
                let host = set_host(&mut request, &authority, &scheme);
                *request.uri_mut() = origin.clone();
                match tx.try_send_request(request).await {
                    Ok(response) => {
                        let back = Back {
                            home,
                            scheme,
                            authority,
                            tx,
                            later: return_when_ready::<B, C>,
                        };
                        return Ok(response.map(|inner| PooledBody {
                            inner,
                            back: Some(back),
                        }));
                    }
                    Err(e) => (e, host),
                }
            }
        };
        match failed.take_message() {
            // Nothing of it was sent on a connection that had served before: the upstream
            // closed it meanwhile. Another connection gets it (a fresh one, eventually).
            Some(mut r) if reused => {
                *r.uri_mut() = uri.clone();
                if host {
                    r.headers_mut().remove(http::header::HOST);
                }
                request = r;
            }
            _ => return Err(SendError::Send(failed.into_error())),
        }
    }
}

fn with_pool<B, C, R>(home: Home<B, C>, f: impl FnOnce(&Pool<B, C>) -> R) -> Option<R> {
    home.try_with(|p| p.get().map(f)).ok().flatten()
}

/// Set `Host` from the URI as hyper-util does, unless the request has one. Whether it did.
fn set_host<B>(request: &mut Request<B>, authority: &Authority, scheme: &Scheme) -> bool {
    if request.headers().contains_key(http::header::HOST) {
        return false;
    }
    let default_port = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let value = match authority.port_u16() {
        Some(port) if Some(port) != default_port && !authority.as_str().contains('@') => {
            HeaderValue::from_str(authority.as_str())
        }
        Some(port) if Some(port) != default_port => {
            HeaderValue::from_str(&format!("{}:{port}", authority.host()))
        }
        _ => HeaderValue::from_str(authority.host()),
    };
    match value {
        Ok(v) => {
            request.headers_mut().insert(http::header::HOST, v);
            true
        }
        Err(_) => false,
    }
}

async fn connect<B, C>(
    home: Home<B, C>,
    uri: &Uri,
    scheme: &Scheme,
    authority: &Authority,
) -> Result<Conn<B>, SendError>
where
    B: RequestBody,
    C: Connect,
{
    use tower::ServiceExt as _;
    let connector = with_pool(home, |p| p.connector.clone())
        .ok_or_else(|| SendError::Connect("no connection pool on this thread".into()))?;
    let io = connector
        .oneshot(uri.clone())
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    if io.connected().is_negotiated_h2() {
        let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(SendError::Send)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream HTTP/2 connection ended: {e}");
            }
        });
        let _ = with_pool(home, |p| p.share_h2(scheme, authority, &tx));
        Ok(Conn::H2(tx))
    } else {
        let (tx, conn) = http1::handshake(io).await.map_err(SendError::Send)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(Conn::H1(tx))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::client::legacy::connect::{Connected, HttpConnector};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// An upstream counting its connections and noting each request's URI and `Host`.
    /// `/big` streams 4 MiB in 64 KiB chunks; anything else answers `ok`.
    async fn upstream(h2: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen: Seen = Arc::default();
        let (count, log) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .map(|h| h.to_str().unwrap().to_string());
                    log.lock().unwrap().push((req.uri().to_string(), host));
                    let big = req.uri().path() == "/big";
                    async move {
                        let body = if big {
                            let chunks = (0..64).map(|_| {
                                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 65536])))
                            });
                            http_body_util::Either::Left(StreamBody::new(
                                futures_util::stream::iter(chunks),
                            ))
                        } else {
                            http_body_util::Either::Right(Full::new(Bytes::from_static(b"ok")))
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        (addr, accepted, seen)
    }

    /// A raw TCP upstream: `serve(n, stream)` runs for the n-th accepted connection (from 0),
    /// in a task of its own. Also returns how many connections it accepted.
    async fn raw_upstream<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(count.fetch_add(1, Ordering::SeqCst), stream));
            }
        });
        (addr, accepted)
    }

    thread_local! {
        static H1: OnceCell<Pool<Full<Bytes>, HttpConnector>> = const { OnceCell::new() };
        static H2: OnceCell<Pool<Full<Bytes>, Test>> = const { OnceCell::new() };
    }

    fn install_h1(idle_timeout: Duration) {
        H1.with(|p| {
            assert!(p.set(Pool::new(HttpConnector::new(), idle_timeout)).is_ok());
        });
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
        Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn read<B: 'static, C: 'static>(response: Response<PooledBody<B, C>>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_turn_with_host_and_origin_form() {
        let (addr, accepted, seen) = upstream(false).await;
        install_h1(Duration::from_secs(90));
        for _ in 0..5 {
            let response = send(&H1, get(addr, "/a?b=1")).await.unwrap();
            assert_eq!(read(response).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        H1.with(|p| assert_eq!(p.get().unwrap().idle_count(), 1));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5);
        for (uri, host) in seen.iter() {
            assert_eq!(uri, "/a?b=1");
            assert_eq!(host.as_deref(), Some(addr.to_string().as_str()));
        }
    }

    #[tokio::test]
    async fn a_host_header_the_request_has_is_kept() {
        let (addr, _, seen) = upstream(false).await;
        install_h1(Duration::from_secs(90));
        let mut request = get(addr, "/");
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("api.example"));
        read(send(&H1, request).await.unwrap()).await;
        assert_eq!(seen.lock().unwrap()[0].1.as_deref(), Some("api.example"));
    }

    #[tokio::test]
    async fn concurrent_requests_open_their_own_connections_and_all_go_back() {
        let (addr, accepted, _) = upstream(false).await;
        install_h1(Duration::from_secs(90));
        let (a, b) = tokio::join!(send(&H1, get(addr, "/")), send(&H1, get(addr, "/")));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        H1.with(|p| assert_eq!(p.get().unwrap().idle_count(), 0));
        read(a).await;
        read(b).await;
        H1.with(|p| assert_eq!(p.get().unwrap().idle_count(), 2));
        for _ in 0..4 {
            read(send(&H1, get(addr, "/")).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_does_not_give_its_connection_back() {
        let (addr, accepted, _) = upstream(false).await;
        install_h1(Duration::from_secs(90));
        let mut body = send(&H1, get(addr, "/big")).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        H1.with(|p| assert_eq!(p.get().unwrap().idle_count(), 0));
        let big = read(send(&H1, get(addr, "/big")).await.unwrap()).await;
        assert_eq!(big.len(), 64 * 65536);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Read to its end, the streamed body's connection is reused.
        read(send(&H1, get(addr, "/")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_idle_connection_is_not_reused() {
        let (addr, accepted, _) = upstream(false).await;
        install_h1(Duration::ZERO);
        read(send(&H1, get(addr, "/")).await.unwrap()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        read(send(&H1, get(addr, "/")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_skipped() {
        // An upstream that answers one request per connection and then closes it, without
        // saying so (no `Connection: close`).
        let (addr, accepted) = raw_upstream(|_, mut stream| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        })
        .await;
        install_h1(Duration::from_secs(90));
        for n in 1..=3 {
            let response = send(&H1, get(addr, "/")).await.unwrap();
            assert_eq!(read(response).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), n);
            // Let the connection's task see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    type Upload = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    thread_local! {
        static UP: OnceCell<Pool<Upload, HttpConnector>> = const { OnceCell::new() };
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_lent_to_the_next_request() {
        // The first connection answers 401 as soon as it has the head, then keeps reading
        // the upload; later ones answer 200.
        let (addr, accepted) = raw_upstream(|n, mut stream| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0; 4096];
            let _ = stream.read(&mut buf).await;
            let answer: &[u8] = if n == 0 {
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            let _ = stream.write_all(answer).await;
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        UP.with(|p| {
            assert!(
                p.set(Pool::new(HttpConnector::new(), Duration::from_secs(90)))
                    .is_ok()
            );
        });
        let (upload, chunks) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let body = StreamBody::new(stream).boxed_unsync();
        let request = Request::post(format!("http://{addr}/upload"))
            .body(body)
            .unwrap();
        let early = send(&UP, request).await.unwrap();
        assert_eq!(early.status(), 401);
        assert_eq!(read(early).await, "no");
        upload.send(Bytes::from_static(b"part")).await.unwrap();
        // Still uploading: the next request gets a connection of its own, at once.
        let next = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()).boxed_unsync())
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), send(&UP, next))
            .await
            .expect("the next request waited behind the upload")
            .unwrap();
        assert_eq!(read(next).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        UP.with(|p| assert_eq!(p.get().unwrap().idle_count(), 1));
        // Once the upload ends, its connection is ready again and goes back too.
        drop(upload);
        let deadline = Instant::now() + Duration::from_secs(5);
        while UP.with(|p| p.get().unwrap().idle_count()) < 2 {
            assert!(
                Instant::now() < deadline,
                "the upload's connection never came back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    thread_local! {
        static LATE: OnceCell<Pool<Full<Bytes>, Test>> = const { OnceCell::new() };
    }

    #[tokio::test]
    async fn a_new_connection_closed_at_once_is_an_error_not_a_reconnect_loop() {
        let (addr, accepted) = raw_upstream(|_, stream| async move { drop(stream) }).await;
        LATE.with(|p| {
            assert!(
                p.set(Pool::new(
                    Test {
                        h2: false,
                        delay: Duration::from_millis(50),
                    },
                    Duration::from_secs(90)
                ))
                .is_ok()
            );
        });
        let sent = tokio::time::timeout(Duration::from_secs(5), send(&LATE, get(addr, "/"))).await;
        let err = sent.expect("kept reconnecting").unwrap_err();
        assert!(matches!(err, SendError::Send(_)), "{err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        install_h1(Duration::from_secs(90));
        let err = send(&H1, get(addr, "/")).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    }

    /// A test connector: plain TCP, reported as having negotiated HTTP/2 (as TLS would)
    /// when `h2`, and handed over only after `delay`, so whatever the upstream did at once
    /// (closing) has happened before hyper first reads.
    #[derive(Clone)]
    struct Test {
        h2: bool,
        delay: Duration,
    }

    struct TestIo(TokioIo<tokio::net::TcpStream>, bool);

    impl Connection for TestIo {
        fn connected(&self) -> Connected {
            if self.1 {
                Connected::new().negotiated_h2()
            } else {
                Connected::new()
            }
        }
    }

    impl hyper::rt::Read for TestIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl hyper::rt::Write for TestIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl tower::Service<Uri> for Test {
        type Response = TestIo;
        type Error = BoxError;
        type Future = Pin<Box<dyn std::future::Future<Output = Result<TestIo, BoxError>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, uri: Uri) -> Self::Future {
            let connecting = HttpConnector::new().call(uri);
            let Test { h2, delay } = self.clone();
            Box::pin(async move {
                let io = connecting.await?;
                tokio::time::sleep(delay).await;
                Ok(TestIo(io, h2))
            })
        }
    }

    #[tokio::test]
    async fn an_http2_upstream_shares_one_connection_with_absolute_uris() {
        let (addr, accepted, seen) = upstream(true).await;
        H2.with(|p| {
            assert!(
                p.set(Pool::new(
                    Test {
                        h2: true,
                        delay: Duration::ZERO,
                    },
                    Duration::from_secs(90)
                ))
                .is_ok()
            );
        });
        let first = send(&H2, get(addr, "/one")).await.unwrap();
        let (a, b) = tokio::join!(send(&H2, get(addr, "/a")), send(&H2, get(addr, "/b")));
        for response in [first, a.unwrap(), b.unwrap()] {
            assert_eq!(response.version(), http::Version::HTTP_2);
            assert_eq!(read(response).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        H2.with(|p| assert_eq!(p.get().unwrap().idle_count(), 1));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, format!("http://{addr}/one"));
        // HTTP/2 carries the authority in `:authority`, not `Host`.
        assert!(seen.iter().all(|(_, host)| host.is_none()), "{seen:?}");
    }
}
