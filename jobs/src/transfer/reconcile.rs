//! Reconciliation of commission transfers against Monime (`worker reconcile`): tickets without
//! a completed transfer, transfers stuck in one status, and rows Monime disagrees with.

use std::time::Duration;

use crate::db::Db;
use futures::StreamExt;

use super::monime::{MonimeClient, MonimeError, TransferStatus};

pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_RECENT: Duration = Duration::from_secs(24 * 3600);
/// Rows listed per finding, at most.
const LIST_LIMIT: i64 = 1_000;
const CONCURRENT_CHECKS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct ReconcileConfig {
    /// Tickets older than this without a completed transfer, and transfers in one unfinished
    /// status for longer than this, need attention.
    pub stuck_after: Duration,
    /// Completed transfers newer than this are checked against Monime too.
    pub recent: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            stuck_after: DEFAULT_STUCK_AFTER,
            recent: DEFAULT_RECENT,
        }
    }
}

/// A ticket without a completed transfer; `status` is its row's status, if it has a row.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct MissingTransfer {
    pub ticket_id: i64,
    pub company_id: String,
    pub status: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct StuckTransfer {
    pub ticket_id: i64,
    pub status: String,
    pub stuck_for_s: i64,
    pub last_error: Option<String>,
}

/// A row whose status (or amount) is not what Monime says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disagreement {
    pub ticket_id: i64,
    pub monime_transfer_id: String,
    pub ours: String,
    pub monime: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    pub missing: Vec<MissingTransfer>,
    pub stuck: Vec<StuckTransfer>,
    pub disagreements: Vec<Disagreement>,
    /// Transfers checked against Monime.
    pub checked: usize,
}

impl ReconcileReport {
    /// Rows that need attention: missing, stuck and disagreeing transfers.
    pub fn findings(&self) -> usize {
        self.missing.len() + self.stuck.len() + self.disagreements.len()
    }

    pub fn needs_attention(&self) -> bool {
        !(self.missing.is_empty() && self.stuck.is_empty() && self.disagreements.is_empty())
    }
}

#[derive(Debug)]
struct ToCheck {
    ticket_id: i64,
    monime_transfer_id: String,
    status: String,
    amount_minor: i64,
    currency: String,
}

pub async fn reconcile(
    pool: &Db,
    client: &MonimeClient,
    config: ReconcileConfig,
) -> Result<ReconcileReport, sqlx::Error> {
    let stuck_s = config.stuck_after.as_secs_f64();
    let missing = sqlx::query_as!(
        MissingTransfer,
        "SELECT t.id AS ticket_id, t.company_id, ct.status::text AS status, ct.last_error \
         FROM tickets t LEFT JOIN commission_transfers ct ON ct.ticket_id = t.id \
         WHERE t.commission_minor > 0 AND t.status = 'issued' \
           AND t.created_at < now() - $1 * interval '1 second' \
           AND (ct.id IS NULL OR ct.status <> 'completed') \
         ORDER BY t.id LIMIT $2",
        stuck_s,
        LIST_LIMIT,
    )
    .fetch_all(pool)
    .await?;
    let stuck = sqlx::query_as!(
        StuckTransfer,
        "SELECT ticket_id, status::text AS \"status!\", \
                floor(extract(epoch FROM now() - status_changed_at))::bigint AS \"stuck_for_s!\", \
                last_error \
         FROM commission_transfers \
         WHERE status IN ('pending', 'processing') \
           AND status_changed_at < now() - $1 * interval '1 second' \
         ORDER BY status_changed_at LIMIT $2",
        stuck_s,
        LIST_LIMIT,
    )
    .fetch_all(pool)
    .await?;
    let to_check = sqlx::query_as!(
        ToCheck,
        "SELECT ticket_id, monime_transfer_id AS \"monime_transfer_id!\", \
                status::text AS \"status!\", amount_minor, currency \
         FROM commission_transfers \
         WHERE monime_transfer_id IS NOT NULL \
           AND (status IN ('pending', 'processing') \
                OR (status = 'completed' AND completed_at > now() - $1 * interval '1 second')) \
         ORDER BY ticket_id",
        config.recent.as_secs_f64(),
    )
    .fetch_all(pool)
    .await?;
    let checked = to_check.len();
    let disagreements: Vec<Disagreement> = futures::stream::iter(to_check)
        .map(|row| async move {
            let answer = client.get_internal_transfer(&row.monime_transfer_id).await;
            compare(row, answer)
        })
        .buffer_unordered(CONCURRENT_CHECKS)
        .filter_map(|d| async move { d })
        .collect()
        .await;
    let mut disagreements = disagreements;
    disagreements.sort_by_key(|d| d.ticket_id);
    Ok(ReconcileReport {
        missing,
        stuck,
        disagreements,
        checked,
    })
}

fn compare(
    row: ToCheck,
    answer: Result<super::monime::InternalTransfer, MonimeError>,
) -> Option<Disagreement> {
    let ours = format!("{} {} {}", row.status, row.amount_minor, row.currency);
    let disagree = |monime: String| {
        Some(Disagreement {
            ticket_id: row.ticket_id,
            monime_transfer_id: row.monime_transfer_id.clone(),
            ours: ours.clone(),
            monime,
        })
    };
    let transfer = match answer {
        Ok(t) => t,
        Err(MonimeError::Status { status: 404, .. }) => {
            return disagree("no such transfer (404)".into())
        }
        Err(e) => return disagree(format!("could not be checked: {e}")),
    };
    let same_status = match transfer.status {
        TransferStatus::Completed => row.status == "completed",
        TransferStatus::Failed => row.status == "failed",
        TransferStatus::Pending | TransferStatus::Processing => row.status == "processing",
    };
    let same_amount = transfer
        .amount
        .as_ref()
        .is_none_or(|a| a.value == row.amount_minor && a.currency == row.currency);
    if same_status && same_amount {
        return None;
    }
    let amount = transfer
        .amount
        .map(|a| format!("{} {}", a.value, a.currency))
        .unwrap_or_default();
    disagree(format!("{} {amount}", transfer.status.as_str()))
}
