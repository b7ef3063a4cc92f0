//! A micro-batcher: handlers that run at the same time hand in one item each, one task writes
//! the items that arrive together as one batch (one statement or one transaction instead of
//! one per handler), and each handler gets its own item's result back.
//!
//! Handlers send through a [`BatchHandle`] (a bounded channel) and wait on a oneshot for their
//! own result. The task flushes a batch when it holds [`BatcherConfig::batch`] items or
//! [`BatcherConfig::delay`] after its first one. Up to [`BatcherConfig::in_flight`] batches
//! are written at once, so gathering the next batch overlaps with writing the last; while
//! every writer is busy, items keep queueing and join the next batch. A full channel makes
//! handlers wait instead of growing memory.
//!
//! Written by hand: the crates that batch (e.g. tower's buffer) forward one request at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Sizes of one batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Items per batch at most.
    pub batch: usize,
    /// How long the first item of a batch waits for company.
    pub delay: Duration,
    /// Batches being written at once (each holds a connection while it is written).
    pub in_flight: usize,
    /// Items waiting to be batched before handlers have to wait.
    pub backlog: usize,
}

impl BatcherConfig {
    fn sane(self) -> BatcherConfig {
        BatcherConfig {
            batch: self.batch.max(1),
            in_flight: self.in_flight.max(1),
            backlog: self.backlog.max(1),
            ..self
        }
    }
}

/// The batcher has stopped (the process is shutting down): the item was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batcher has stopped")]
pub struct Stopped;

struct Request<I, O> {
    item: I,
    reply: oneshot::Sender<O>,
}

/// Where handlers send their items. Cheap to clone.
pub struct BatchHandle<I, O> {
    tx: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for BatchHandle<I, O> {
    fn clone(&self) -> Self {
        BatchHandle {
            tx: self.tx.clone(),
        }
    }
}

impl<I, O> BatchHandle<I, O> {
    /// Writes `item` with whatever other items arrive meanwhile, and returns its own result.
    pub async fn submit(&self, item: I) -> Result<O, Stopped> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Request { item, reply })
            .await
            .map_err(|_| Stopped)?;
        result.await.map_err(|_| Stopped)
    }
}

/// Starts a batcher task named `name` (the `batch` label of its metrics) that writes each
/// batch with `write`, which returns one result per item, in the items' order.
///
/// The task ends when every handle is dropped, or when `stop` is cancelled: then it refuses
/// new items ([`Stopped`]) and ends once the items already sent are written.
pub fn start<I, O, W, Fut>(
    name: &'static str,
    config: BatcherConfig,
    stop: CancellationToken,
    write: W,
) -> (BatchHandle<I, O>, JoinHandle<()>)
where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let config = config.sane();
    let (tx, rx) = mpsc::channel(config.backlog);
    let task = tokio::spawn(run(name, config, rx, stop, Arc::new(write)));
    (BatchHandle { tx }, task)
}

async fn run<I, O, W, Fut>(
    name: &'static str,
    config: BatcherConfig,
    mut rx: mpsc::Receiver<Request<I, O>>,
    stop: CancellationToken,
    write: Arc<W>,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let writers = Arc::new(Semaphore::new(config.in_flight));
    loop {
        // Wait for the first item of a batch, then gather until full or the delay ends.
        let first = tokio::select! {
            biased;
            request = rx.recv() => request,
            _ = stop.cancelled() => {
                // Refuse new items; what is queued is still written.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = Vec::with_capacity(config.batch);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.delay;
        while batch.len() < config.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        // While every writer is busy, items keep queueing in the channel and join this batch
        // once one frees up.
        let Ok(permit) = writers.clone().acquire_owned().await else {
            break;
        };
        while batch.len() < config.batch {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let write = write.clone();
        tokio::spawn(async move {
            write_batch(name, &*write, batch).await;
            drop(permit);
        });
    }
    // Wait for the batches still being written.
    let _ = writers.acquire_many(config.in_flight as u32).await;
}

async fn write_batch<I, O, W, Fut>(name: &'static str, write: &W, batch: Vec<Request<I, O>>)
where
    W: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Vec<O>>,
{
    let size = batch.len();
    let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
        batch.into_iter().map(|r| (r.item, r.reply)).unzip();
    let results = write(items).await;
    debug_assert_eq!(
        results.len(),
        size,
        "a batch writer returns one result per item"
    );
    metrics::histogram!("poda_batch_size", "batch" => name).record(size as f64);
    // A handler that stopped waiting (shutdown past its grace) has nobody to tell; its job runs
    // again. A reply without a result tells its handler `Stopped`.
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn items_sent_together_are_written_together_and_each_gets_its_own_result() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let config = BatcherConfig {
            batch: 10,
            delay: Duration::from_millis(50),
            in_flight: 1,
            backlog: 100,
        };
        let (handle, task) = start("test", config, CancellationToken::new(), move |items| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(items.len());
                items.into_iter().map(|i: u32| i * 2).collect::<Vec<_>>()
            }
        });
        let results = futures::future::join_all((0..25u32).map(|i| {
            let handle = handle.clone();
            async move { handle.submit(i).await }
        }))
        .await;
        assert_eq!(results, (0..25u32).map(|i| Ok(i * 2)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 25);
        assert!(sizes.iter().all(|&s| s <= 10), "{sizes:?}");
        assert!(
            sizes.len() <= 4,
            "25 items at once take 3 batches of 10 or close: {sizes:?}"
        );
        drop(handle);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_stopped_batcher_writes_what_it_holds_and_refuses_the_rest() {
        let stop = CancellationToken::new();
        let config = BatcherConfig {
            batch: 100,
            delay: Duration::from_millis(20),
            in_flight: 1,
            backlog: 100,
        };
        let (handle, task) = start("test", config, stop.clone(), |items: Vec<u8>| async move {
            items
        });
        let sent = handle.submit(7);
        futures::pin_mut!(sent);
        // One poll puts the item in the channel (it has room) and then waits for the result.
        assert!(futures::poll!(&mut sent).is_pending());
        stop.cancel();
        assert_eq!(sent.await, Ok(7));
        task.await.unwrap();
        assert_eq!(handle.submit(8).await, Err(Stopped));
    }
}
