//! The floor for the load benchmark (`benches/load.py`): the least a reverse proxy built
//! on Outpost's HTTP stack (tokio, hyper, and Outpost's serving threads: an acceptor
//! handing connections to one single-threaded runtime per CPU, each with its own upstream
//! connection pool, `outpost::client::pool`) can do — forward every request to one upstream with a
//! static `Authorization` header. No policy, no signing, no limits: not something to
//! deploy, a measure of what the stack itself costs on this machine.
//!
//! ```sh
//! cargo run --release -p outpost --example floor_proxy -- 127.0.0.1:8081 127.0.0.1:18095
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost::client::pool::{self, Pool, PooledBody};
use outpost::worker::Workers;

type Body = http_body_util::Either<
    PooledBody<Incoming, HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(Body::Right(http_body_util::Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// The allocator `outpost` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// Each serving thread's own connection pool.
    static POOL: std::cell::OnceCell<Pool<Incoming, HttpConnector>> =
        const { std::cell::OnceCell::new() };
}

fn install_pool() {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    POOL.with(|p| {
        let _ = p.set(Pool::new(connector, outpost::client::POOL_IDLE_TIMEOUT));
    });
}

async fn serve(stream: std::net::TcpStream, upstream: Arc<str>) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let auth = HeaderValue::from_static("Bearer bench-token-value");
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let auth = auth.clone();
        let uri = format!(
            "http://{upstream}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        )
        .parse::<Uri>();
        let (mut parts, body) = req.into_parts();
        let sent = uri.map(|uri| {
            parts.uri = uri;
            parts.headers.remove(http::header::HOST);
            parts.headers.insert(http::header::AUTHORIZATION, auth);
            pool::send(&POOL, Request::from_parts(parts, body))
        });
        async move {
            Ok::<_, Infallible>(match sent {
                Ok(sent) => match sent.await {
                    Ok(resp) => resp.map(Body::Left),
                    Err(_) => bad_gateway(),
                },
                Err(_) => bad_gateway(),
            })
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), Some(listen)) = (args.next(), args.next()) else {
        return Err("usage: floor_proxy <upstream host:port> <listen host:port>".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: Arc<str> = upstream.into();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    control.block_on(async move {
        let mut workers = Workers::start(
            threads,
            || async { install_pool() },
            move |s| serve(s, upstream.clone()),
        )?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            if workers.dispatch(stream.into_std()?).is_err() {
                return Err("the serving threads stopped".into());
            }
        }
    })
}
