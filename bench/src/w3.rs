//! W3 latency: one worker process running and idle; a producer (this process, its own
//! durable connection) enqueues N jobs one at a time at a steady rate, each payload carrying
//! its enqueue wall-clock time. Latency = handler start (from the worker's tally) − enqueue
//! time, so it includes the enqueue's durable commit, the NOTIFY, the claim and the dispatch.

use std::time::{Duration, Instant};

use poda_jobs::engine::{enqueue_one, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use serde_json::json;

use super::report::Summary;
use super::{percentile, print_result, round3, with_db, BenchArgs, ExactlyOnce, Workers};
use poda::tally::now_us;

pub const DEFAULT_N: usize = 2_000;

pub async fn run(args: &BenchArgs, summary: &mut Summary) -> anyhow::Result<()> {
    let n = args.n_or(DEFAULT_N);
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    for run in 1..=args.runs {
        let result = with_db(args, "w3", run, async |db| {
            db.analyze().await?;
            let workers = Workers::start(args, db, 1).await?;
            let mut conn = db.pool.pool().acquire().await?;
            let mut ticker = tokio::time::interval(period);
            let started = Instant::now();
            for i in 0..n {
                ticker.tick().await;
                let job = ProbeJob {
                    enqueued_at_us: Some(now_us()),
                    ..ProbeJob::new(i as i64)
                };
                enqueue_one(&mut conn, &job.to_job(RetryPolicy::default())).await?;
            }
            let produced_in = started.elapsed().as_secs_f64();
            drop(conn);
            db.wait_all_finished(Duration::from_secs(120)).await?;
            let entries = workers.stop().await?;
            let (completed, total) = db.completed_count().await?;
            let check = ExactlyOnce::check(&entries, n, 1);
            let mut latencies: Vec<f64> = entries
                .iter()
                .filter_map(|e| {
                    e.enqueued_at_us
                        .map(|at| (e.started_at_us - at) as f64 / 1000.0)
                })
                .collect();
            latencies.sort_by(|a, b| a.total_cmp(b));
            let ok =
                check.ok(n) && completed == n as i64 && total == n as i64 && latencies.len() == n;
            Ok(json!({
                "scenario": "w3", "run": run, "n": n,
                "rate_per_s": args.rate,
                "achieved_rate_per_s": (n as f64 / produced_in).round() as u64,
                "p50_ms": round3(percentile(&latencies, 50.0)),
                "p95_ms": round3(percentile(&latencies, 95.0)),
                "p99_ms": round3(percentile(&latencies, 99.0)),
                "max_ms": round3(latencies.last().copied().unwrap_or(f64::NAN)),
                "distinct": check.distinct, "duplicates": check.duplicates,
                "missing": check.missing,
                "prefetch": args.prefetch,
                    "ok": ok,
            }))
        })
        .await?;
        print_result(&result);
        for figure in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            summary.add("w3", figure, result[figure].as_f64().unwrap_or(f64::NAN));
        }
        summary.add_check(result["ok"].as_bool() == Some(true));
    }
    Ok(())
}
