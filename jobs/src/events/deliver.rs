//! Delivering a batch of events to one receiver: each event POSTed on its own, signed, a few
//! in flight at once; the engine retries the job durably while some event may still go
//! through.
//!
//! An event's answer settles it: 2xx delivered, a 4xx other than 408/429 refused for good.
//! Connection errors, timeouts, 408, 429 and 5xx leave it for the next run. A run that
//! settles every event ends the job (failed for review if the receiver refused any, done
//! otherwise). A run that leaves some events unsettled records what it settled in
//! `outbox_deliveries`, so the next run sends only the rest, and asks the engine to retry
//! (after the receiver's `Retry-After` if it gave one). Refusals are always recorded there.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use crate::db::Db;
use crate::engine::{JobError, JobMeta, Outcome};

use super::{body, DeliveryJob, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, SIGNATURE_HEADER};

/// Signs a body at a unix time: returns the `Poda-Signature` value. The application passes
/// the signing of Monime's webhook scheme, keyed with `EVENTS_WEBHOOK_SECRET`.
pub type Signer = Arc<dyn Fn(i64, &[u8]) -> String + Send + Sync>;

/// How events are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelivererConfig {
    pub timeout: Duration,
    /// POSTs one job has in flight at once.
    pub concurrency: usize,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        DelivererConfig {
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("building the HTTP client for events failed")]
    Client(#[source] reqwest::Error),
    #[error("reading or recording outbox events failed")]
    Database(#[from] sqlx::Error),
    #[error("{pending} of {total} events not yet delivered to {url}: {first}")]
    Pending {
        url: String,
        pending: usize,
        total: usize,
        first: String,
    },
    #[error("{refused} events refused by {url} (see outbox_deliveries): {first}")]
    Refused {
        url: String,
        refused: usize,
        first: String,
    },
}

/// The delivery client, built once per process and shared by the handlers.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    signer: Signer,
    concurrency: usize,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    pub fn new(config: &DelivererConfig, signer: Signer) -> Result<Deliverer, DeliveryError> {
        let client =
            crate::http_client::with_timeout(config.timeout).map_err(DeliveryError::Client)?;
        Ok(Deliverer {
            client,
            signer,
            concurrency: config.concurrency.max(1),
        })
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Answer {
        let signature = (self.signer)(Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Answer::Retry {
                    detail: crate::engine::outcome::error_chain(&error),
                    retry_after: None,
                }
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Answer::Delivered { status };
        }
        let detail = format!("answered {status}");
        if (400..500).contains(&status) && status != 408 && status != 429 {
            return Answer::Refused { status, detail };
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Answer::Retry {
            detail,
            retry_after,
        }
    }
}

/// What one POST of one event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Delivered {
        status: u16,
    },
    Refused {
        status: u16,
        detail: String,
    },
    Retry {
        detail: String,
        retry_after: Option<Duration>,
    },
}

/// One event of the job not settled at this receiver yet.
struct Pending {
    row: i64,
    seq: i32,
    kind: String,
    created_at: DateTime<Utc>,
    data: serde_json::Value,
}

/// Delivers the job's events that are not settled yet.
#[tracing::instrument(skip_all, fields(job.id = %meta.id, job.attempt = meta.attempt,
    rows = job.rows.len()))]
pub async fn handle(
    db: &Db,
    deliverer: &Deliverer,
    meta: &JobMeta,
    job: DeliveryJob,
) -> Result<Outcome, JobError> {
    let (refused, pending) = deliver(db, deliverer, &job).await.map_err(|e| match e {
        DeliveryError::Client(_) => JobError::permanent(e),
        other => JobError::retryable(other),
    })?;
    if let Some((pending, retry_after)) = pending {
        return Err(match retry_after {
            Some(delay) => JobError::retry_after(pending, delay),
            None => JobError::retryable(pending),
        });
    }
    if let Some(refused) = refused {
        return Err(JobError::permanent(refused));
    }
    Ok(Outcome::Done)
}

/// What became of an event at this receiver, for `outbox_deliveries`: (row, position), state,
/// the receiver's status (none when nothing was sent), detail.
type Settled = ((i64, i32), &'static str, Option<i16>, String);

/// The detail recorded for an event whose subject row no longer exists.
const SUBJECT_GONE: &str = "its subject row is gone: no data to send";

type Unsettled = (DeliveryError, Option<Duration>);

async fn deliver(
    db: &Db,
    deliverer: &Deliverer,
    job: &DeliveryJob,
) -> Result<(Option<DeliveryError>, Option<Unsettled>), DeliveryError> {
    // One line per event (outbox_event_list: inline data, or built from the ticket); relies on
    // the primary keys of outbox_events, tickets and outbox_deliveries.
    let lines = sqlx::query!(
        "SELECT e.row_id AS \"row_id!\", e.seq AS \"seq!\", e.type AS \"kind!\", \
                e.created_at AS \"created_at!\", e.data, d.state AS \"settled?\" \
         FROM outbox_event_list e \
         LEFT JOIN outbox_deliveries d ON d.event_id = e.row_id AND d.seq = e.seq AND d.url = $2 \
         WHERE e.row_id = ANY($1) \
         ORDER BY e.row_id, e.seq",
        &job.rows,
        &job.url,
    )
    .fetch_all(db)
    .await?;
    let total = lines.len();
    let found: std::collections::BTreeSet<i64> = lines.iter().map(|l| l.row_id).collect();
    if found.len() < job.rows.len() {
        tracing::warn!(
            missing = job.rows.len() - found.len(),
            "outbox rows of this delivery are gone (pruned past the retention); their events are not sent"
        );
    }
    let mut settled_before = Vec::new();
    let mut subject_gone = Vec::new();
    let mut events = Vec::new();
    for line in lines {
        // Refused or delivered by an earlier run: not sent again.
        if let Some(state) = line.settled {
            settled_before.push(state);
            continue;
        }
        // An event whose subject row is gone has no data to send: refused for review, the
        // others go on.
        let Some(data) = line.data else {
            subject_gone.push((line.row_id, line.seq));
            continue;
        };
        events.push(Pending {
            row: line.row_id,
            seq: line.seq,
            kind: line.kind,
            created_at: line.created_at,
            data,
        });
    }
    // Refused by an earlier run: still refused.
    let refused_before = settled_before.iter().filter(|s| *s == "failed").count();
    let answers: Vec<((i64, i32), Answer)> = stream::iter(events)
        .map(|event| async move {
            let body = body(
                event.row,
                event.seq,
                &event.kind,
                event.created_at,
                &event.data,
            );
            ((event.row, event.seq), deliverer.post(&job.url, body).await)
        })
        .buffer_unordered(deliverer.concurrency)
        .collect()
        .await;

    let mut settled: Vec<Settled> = subject_gone
        .into_iter()
        .map(|id| (id, "failed", None, SUBJECT_GONE.to_owned()))
        .collect();
    let mut refused = (
        refused_before + settled.len(),
        (refused_before > 0)
            .then(|| "refused by an earlier run".to_owned())
            .or_else(|| (!settled.is_empty()).then(|| SUBJECT_GONE.to_owned())),
    );
    let mut pending = (0, None::<String>, None::<Duration>);
    let mut delivered = Vec::new();
    for (id, answer) in answers {
        match answer {
            Answer::Delivered { status } => delivered.push((id, status)),
            Answer::Refused { status, detail } => {
                refused.0 += 1;
                refused.1.get_or_insert_with(|| detail.clone());
                settled.push((id, "failed", Some(status as i16), detail));
            }
            Answer::Retry {
                detail,
                retry_after,
            } => {
                pending.0 += 1;
                pending.1.get_or_insert(detail);
                pending.2 = pending.2.max(retry_after);
            }
        }
    }
    // Delivered events are remembered only when a later run will look: when some are left.
    if pending.0 > 0 {
        settled.extend(
            delivered
                .into_iter()
                .map(|(id, status)| (id, "delivered", Some(status as i16), String::new())),
        );
    }
    if !settled.is_empty() {
        let rows: Vec<i64> = settled.iter().map(|s| s.0 .0).collect();
        let seqs: Vec<i32> = settled.iter().map(|s| s.0 .1).collect();
        let states: Vec<&str> = settled.iter().map(|s| s.1).collect();
        let statuses: Vec<Option<i16>> = settled.iter().map(|s| s.2).collect();
        let details: Vec<Option<&str>> = settled
            .iter()
            .map(|s| (!s.3.is_empty()).then_some(s.3.as_str()))
            .collect();
        sqlx::query!(
            "INSERT INTO outbox_deliveries (event_id, seq, url, state, status, detail) \
             SELECT row_id, seq, $3, state, status, detail \
             FROM unnest($1::bigint[], $2::int[], $4::text[], $5::smallint[], $6::text[]) \
                  AS u(row_id, seq, state, status, detail) \
             ON CONFLICT (event_id, seq, url) DO NOTHING",
            &rows,
            &seqs,
            &job.url,
            &states as &[&str],
            &statuses as &[Option<i16>],
            &details as &[Option<&str>],
        )
        .execute(db)
        .await?;
    }
    let refused = (refused.0 > 0).then(|| DeliveryError::Refused {
        url: job.url.clone(),
        refused: refused.0,
        first: refused.1.unwrap_or_default(),
    });
    let pending = (pending.0 > 0).then(|| {
        (
            DeliveryError::Pending {
                url: job.url.clone(),
                pending: pending.0,
                total,
                first: pending.1.unwrap_or_default(),
            },
            pending.2,
        )
    });
    Ok((refused, pending))
}
