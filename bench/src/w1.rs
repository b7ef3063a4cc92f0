//! W1 bulk enqueue: N probe jobs through `enqueue_many` in calls of 1,000, one after another
//! from one client on a durable (synchronous-commit) connection. Building the payloads is
//! inside the clock. The check: N rows, N distinct `n`.

use std::time::Instant;

use anyhow::Context;
use poda_jobs::engine::{enqueue_many, NewJob, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use serde_json::json;

use super::report::Summary;
use super::{print_result, round3, with_db, BenchArgs, ENQUEUE_CALL};

pub const DEFAULT_N: usize = 100_000;

pub async fn run(args: &BenchArgs, summary: &mut Summary) -> anyhow::Result<()> {
    let n = args.n_or(DEFAULT_N);
    for run in 1..=args.runs {
        let result = with_db(args, "w1", run, async |db| {
            let mut conn = db.pool.pool().acquire().await?;
            let started = Instant::now();
            let mut start = 0;
            while start < n {
                let end = (start + ENQUEUE_CALL).min(n);
                let jobs: Vec<NewJob> = (start..end)
                    .map(|i| ProbeJob::new(i as i64).to_job(RetryPolicy::default()))
                    .collect();
                enqueue_many(&mut conn, &jobs).await?;
                start = end;
            }
            let seconds = started.elapsed().as_secs_f64();
            let (rows, distinct): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(DISTINCT (payload->>'n')::bigint) FROM jobs",
            )
            .fetch_one(&mut *conn)
            .await
            .context("counting enqueued jobs")?;
            let ok = rows == n as i64 && distinct == n as i64;
            Ok(json!({
                "scenario": "w1", "run": run, "n": n,
                "seconds": round3(seconds),
                "per_s": (n as f64 / seconds).round() as u64,
                "call_size": ENQUEUE_CALL,
                "rows": rows, "distinct": distinct,
                "ok": ok,
            }))
        })
        .await?;
        print_result(&result);
        summary.add("w1", "jobs/s", result["per_s"].as_f64().unwrap_or_default());
        summary.add_check(result["ok"].as_bool() == Some(true));
    }
    Ok(())
}
