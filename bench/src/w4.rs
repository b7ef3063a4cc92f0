//! W4 retry: N probe jobs with at most 2 attempts, each failing its first attempt and
//! succeeding on the second, with the shortest backoff the engine allows (0 ms: the retry is
//! runnable as soon as the failure is written). One worker process. The check: each `n` ran
//! exactly twice (attempt 1 failed, attempt 2 succeeded) and the database shows N completed.

use std::time::Duration;

use poda_jobs::engine::RetryPolicy;
use serde_json::json;

use super::report::Summary;
use super::{print_result, round3, with_db, BenchArgs, Drain, ExactlyOnce};

pub const DEFAULT_N: usize = 10_000;
/// The shortest backoff the engine accepts (`backoff_base_ms >= 0`).
pub const SHORTEST_BACKOFF: Duration = Duration::ZERO;

pub async fn run(args: &BenchArgs, summary: &mut Summary) -> anyhow::Result<()> {
    let n = args.n_or(DEFAULT_N);
    let retry = RetryPolicy::new(2, SHORTEST_BACKOFF, SHORTEST_BACKOFF);
    for run in 1..=args.runs {
        let result = with_db(args, "w4", run, async |db| {
            db.load_probes(n, retry, |job| job.fail_times = 1).await?;
            db.analyze().await?;
            let Drain {
                seconds,
                entries,
                completed,
                total,
            } = db.timed_drain(args, 1).await?;
            let check = ExactlyOnce::check(&entries, n, 2);
            let ok = check.ok(n) && completed == n as i64 && total == n as i64;
            Ok(json!({
                "scenario": "w4", "run": run, "n": n,
                "seconds": round3(seconds),
                "per_s": (n as f64 / seconds).round() as u64,
                "max_attempts": 2,
                "backoff_ms": SHORTEST_BACKOFF.as_millis() as u64,
                "concurrency": args.concurrency,
                "completed": completed,
                "runs_recorded": entries.len(),
                "distinct": check.distinct, "duplicates": check.duplicates,
                "missing": check.missing,
                "prefetch": args.prefetch,
                    "ok": ok,
            }))
        })
        .await?;
        print_result(&result);
        summary.add("w4", "jobs/s", result["per_s"].as_f64().unwrap_or_default());
        summary.add_check(result["ok"].as_bool() == Some(true));
    }
    Ok(())
}
