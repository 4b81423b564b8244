//! The floor for the load benchmark (`benches/load.py`): the least a reverse proxy built
//! on Outpost's HTTP stack (tokio, hyper, hyper-util's pooled client) can do — forward
//! every request to one upstream with a static `Authorization` header. No policy, no
//! signing, no limits: not something to deploy, a measure of what the stack itself costs
//! on this machine.
//!
//! ```sh
//! cargo run --release -p outpost --example floor_proxy -- 127.0.0.1:8081 127.0.0.1:18095
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(Body::Right(http_body_util::Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), Some(listen)) = (args.next(), args.next()) else {
        return Err("usage: floor_proxy <upstream host:port> <listen host:port>".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let auth = HeaderValue::from_static("Bearer bench-token-value");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream, auth) = (client.clone(), upstream.clone(), auth.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (client, auth) = (client.clone(), auth.clone());
                let uri = format!(
                    "http://{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                )
                .parse::<Uri>();
                async move {
                    let Ok(uri) = uri else {
                        return Ok::<_, Infallible>(bad_gateway());
                    };
                    let (mut parts, body) = req.into_parts();
                    parts.uri = uri;
                    parts.headers.remove(http::header::HOST);
                    parts.headers.insert(http::header::AUTHORIZATION, auth);
                    Ok(
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(resp) => resp.map(Body::Left),
                            Err(_) => bad_gateway(),
                        },
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
