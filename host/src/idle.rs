//! Idle timeouts on streamed bodies: a body that delivers nothing for `idle` fails
//! (D12). Used both ways: the agent's request body (slow-body defence) and the
//! upstream's response body.
//!
//! The timer is armed only when the body actually waits, and is not reset for every
//! frame: each frame records when it arrived, and when the timer fires early because
//! frames kept coming, it is re-armed for `idle` after the last one. A response that
//! arrives whole with its head (most of them) never touches the timer wheel; a 10 MB
//! stream re-arms it about once per `idle` instead of once per chunk.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// What a body waiting too long means, and how it is reported.
pub trait OnIdle: Send + Unpin + 'static {
    /// The error that ends the body.
    fn error(&self, idle: Duration) -> axum::Error;
}

/// A body that fails after `idle` without a frame. Length, end of stream and trailers
/// are those of the inner body.
pub struct IdleGuard<K: OnIdle> {
    inner: Body,
    idle: Duration,
    /// When the last frame arrived (or the guard was made).
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    on_idle: K,
    /// Set once the idle error was returned: the body is over.
    expired: bool,
}

impl<K: OnIdle> IdleGuard<K> {
    /// Guard `inner`; the clock starts now.
    pub fn new(inner: Body, idle: Duration, on_idle: K) -> Self {
        Self {
            inner,
            idle,
            last: Instant::now(),
            timer: None,
            on_idle,
            expired: false,
        }
    }

    /// Poll the timer after the inner body said `Pending`: `Ready` once the body has
    /// really been idle for `idle`.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let due = self.last + self.idle;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired at the deadline computed from the latest frame: idle.
                Poll::Ready(()) if self.last + self.idle <= Instant::now() => {
                    return Poll::Ready(());
                }
                // A frame arrived since the timer was armed: re-arm from it.
                Poll::Ready(()) => {}
            }
        }
    }
}

impl<K: OnIdle> http_body::Body for IdleGuard<K> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last = Instant::now();
                Poll::Ready(frame)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(()) => {
                    this.expired = true;
                    this.timer = None;
                    Poll::Ready(Some(Err(this.on_idle.error(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Timeout;
    impl OnIdle for Timeout {
        fn error(&self, idle: Duration) -> axum::Error {
            axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("idle {} ms", idle.as_millis()),
            ))
        }
    }

    /// A body fed by a channel: each item is sent after its delay.
    fn paced(delays_ms: &[u64]) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let delays = delays_ms.to_vec();
        tokio::spawn(async move {
            for (i, d) in delays.into_iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(d)).await;
                if tx.send(Ok(Bytes::from(format!("{i};")))).await.is_err() {
                    return;
                }
            }
        });
        Body::from_stream(tokio_stream_from(rx))
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_is_never_cut_even_past_many_idle_periods() {
        // 30 chunks 40 ms apart: 1.2 s in all, with an idle limit of 100 ms.
        let body = IdleGuard::new(paced(&[40; 30]), Duration::from_millis(100), Timeout);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.iter().filter(|b| **b == b';').count(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_after_the_idle_period_from_its_last_frame() {
        let started = Instant::now();
        let mut body = IdleGuard::new(
            paced(&[50, 50, 10_000]),
            Duration::from_millis(100),
            Timeout,
        );
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("idle 100 ms"), "{err}");
        // Second frame at 100 ms, then 100 ms of silence.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(250),
            "{waited:?}"
        );
        assert!(
            body.frame().await.is_none(),
            "the body ends after its error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_passes_with_its_length_and_never_arms_the_timer() {
        let mut body = IdleGuard::new(Body::from("hello"), Duration::from_millis(100), Timeout);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(body.frame().await.is_none());
        assert!(body.timer.is_none());
    }
}
