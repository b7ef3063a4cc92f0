//! W2 drain: N no-op probe jobs (loaded like W1, outside the clock) drained by 1 and by 2
//! worker processes at once, C handlers and C + 2 connections each. The queue is paused
//! while the workers start; the clock starts at resume and stops when the database shows no
//! job available or running. The check: the workers' tallies hold each `n` exactly once,
//! and the database shows N completed.

use poda_jobs::engine::RetryPolicy;
use serde_json::json;

use super::report::Summary;
use super::{print_result, round3, with_db, BenchArgs, Drain, ExactlyOnce};

pub const DEFAULT_N: usize = 100_000;

pub async fn run(args: &BenchArgs, summary: &mut Summary) -> anyhow::Result<()> {
    let n = args.n_or(DEFAULT_N);
    for &procs in &args.procs {
        for run in 1..=args.runs {
            let result = with_db(args, "w2", run, async |db| {
                db.load_finished(args.finished).await?;
                db.load_probes(n, RetryPolicy::default(), |_| {}).await?;
                db.analyze().await?;
                let Drain {
                    seconds,
                    entries,
                    completed,
                    total,
                } = db.timed_drain(args, procs).await?;
                let check = ExactlyOnce::check(&entries, n, 1);
                let all = (n + args.finished) as i64;
                let ok = check.ok(n) && completed == all && total == all;
                Ok(json!({
                    "scenario": "w2", "run": run, "procs": procs, "n": n,
                    "pgbouncer": args.pgbouncer,
                    "seconds": round3(seconds),
                    "per_s": (n as f64 / seconds).round() as u64,
                    "concurrency": args.concurrency,
                    "connections_per_proc": args.concurrency + 2,
                    "batch_size": args.batch_size,
                    "prefetch": args.prefetch,
                    "completed": completed,
                    "finished_rows": args.finished,
                    "distinct": check.distinct, "duplicates": check.duplicates,
                    "missing": check.missing,
                    "ok": ok,
                }))
            })
            .await?;
            print_result(&result);
            let via = if args.pgbouncer { " via pgbouncer" } else { "" };
            summary.add(
                &format!("w2 procs={procs} finished={}{via}", args.finished),
                "jobs/s",
                result["per_s"].as_f64().unwrap_or_default(),
            );
            summary.add_check(result["ok"].as_bool() == Some(true));
        }
    }
    Ok(())
}
