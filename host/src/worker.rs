//! The serving threads (`OUTPOST_WORKERS`, one per CPU by default). The acceptor, on the
//! control runtime, hands each new connection to the next worker in turn; a worker is a
//! thread with a single-threaded tokio runtime of its own and an upstream client of its
//! own ([`crate::client::install_for_this_thread`]). A request's tasks, its timers and its
//! pooled upstream connection therefore stay on one thread: nothing wakes another thread
//! on the way through, where a work-stealing runtime with one shared connection pool
//! passes most requests between threads several times. Only new connections cross threads
//! (one message each).
//!
//! It sits between the acceptor ([`crate::server::serve`]) and the connection: what runs on
//! a worker is everything from the first byte of a request to the last of its response.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

/// Serving threads, each draining its own queue of accepted connections.
#[derive(Debug)]
pub struct Workers<T> {
    queues: Vec<mpsc::UnboundedSender<T>>,
    next: usize,
    threads: Vec<JoinHandle<()>>,
    done: watch::Sender<bool>,
}

impl<T: Send + 'static> Workers<T> {
    /// Start `count` workers (at least one). Each runs `setup()` once on its runtime,
    /// then `serve(item)` as a task of its own for every item dispatched to it (items
    /// dispatched meanwhile wait in its queue).
    pub fn start<S, SFut, F, Fut>(count: usize, setup: S, serve: F) -> io::Result<Self>
    where
        S: Fn() -> SFut + Clone + Send + 'static,
        SFut: Future<Output = ()>,
        F: Fn(T) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (done, _) = watch::channel(false);
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for n in 0..count.max(1) {
            // Built here, not on the thread, so a failure is reported before serving.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<T>();
            let (setup, serve, mut finished) = (setup.clone(), serve.clone(), done.subscribe());
            let thread = std::thread::Builder::new()
                .name(format!("outpost-worker-{n}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        setup().await;
                        while let Some(item) = rx.recv().await {
                            tokio::spawn(serve(item));
                        }
                        // No more connections: keep serving the ones in flight until
                        // told to stop (after the graceful-shutdown wait).
                        let _ = finished.wait_for(|d| *d).await;
                    });
                })?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            queues,
            next: 0,
            threads,
            done,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Hand `item` to the next worker in turn. Gives it back if every worker is gone.
    pub fn dispatch(&mut self, mut item: T) -> Result<(), T> {
        for _ in 0..self.queues.len() {
            let n = self.next % self.queues.len();
            self.next = self.next.wrapping_add(1);
            match self.queues[n].send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        Err(item)
    }

    /// Stop taking work; tasks still running keep running.
    pub fn close(&mut self) {
        self.queues.clear();
    }

    /// Stop every worker, cancelling what still runs on them, and wait for the threads.
    pub async fn stop(mut self) {
        self.close();
        let _ = self.done.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn items_go_round_robin_and_each_runs_on_its_workers_thread() {
        let seen = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
        let record = seen.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut workers = Workers::start(
            3,
            || async {},
            move |n: usize| {
                let (record, tx) = (record.clone(), tx.clone());
                async move {
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    record.lock().unwrap().push((n, name));
                    tx.send(()).unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(workers.len(), 3);
        for n in 0..6 {
            workers.dispatch(n).unwrap();
        }
        for _ in 0..6 {
            rx.recv().await.unwrap();
        }
        workers.stop().await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let names: Vec<_> = seen.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "outpost-worker-0",
                "outpost-worker-1",
                "outpost-worker-2",
                "outpost-worker-0",
                "outpost-worker-1",
                "outpost-worker-2",
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn setup_runs_on_every_worker_and_in_flight_work_finishes_after_close() {
        let setups = Arc::new(Mutex::new(0));
        let counted = setups.clone();
        let (go_tx, go_rx) = watch::channel(false);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let mut workers = Workers::start(
            2,
            move || {
                *counted.lock().unwrap() += 1;
                async {}
            },
            move |(): ()| {
                let (mut go, done) = (go_rx.clone(), done_tx.clone());
                async move {
                    go.wait_for(|g| *g).await.unwrap();
                    done.send(()).unwrap();
                }
            },
        )
        .unwrap();
        workers.dispatch(()).unwrap();
        workers.close();
        assert!(workers.dispatch(()).is_err(), "closed workers take no work");
        // The task dispatched before close still runs to the end.
        go_tx.send(true).unwrap();
        done_rx.recv().await.unwrap();
        workers.stop().await;
        assert_eq!(*setups.lock().unwrap(), 2);
    }
}
