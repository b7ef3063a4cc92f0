//! The probe tally: each probe run a worker process starts, kept in memory and written to a
//! file at shutdown (hidden `worker --probe-tally FILE`). The benchmarks read it to check
//! that every job ran exactly once and to measure pickup latency, without the handler doing
//! any database work.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// One handler start: which probe, which attempt, when (µs since the Unix epoch), and the
/// enqueue time the payload carried, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TallyEntry {
    pub n: i64,
    pub attempt: i32,
    pub started_at_us: i64,
    pub enqueued_at_us: Option<i64>,
}

/// Shared by every probe handler of a process; a no-op when disabled.
#[derive(Clone, Default)]
pub struct ProbeTally {
    entries: Option<Arc<Mutex<Vec<TallyEntry>>>>,
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl ProbeTally {
    pub fn enabled() -> Self {
        ProbeTally {
            entries: Some(Arc::new(Mutex::new(Vec::with_capacity(1 << 16)))),
        }
    }

    pub fn record(&self, n: i64, attempt: i32, enqueued_at_us: Option<i64>) {
        if let Some(entries) = &self.entries {
            let started_at_us = now_us();
            entries.lock().expect("tally lock").push(TallyEntry {
                n,
                attempt,
                started_at_us,
                enqueued_at_us,
            });
        }
    }

    /// Writes one line per run: `n attempt started_at_us enqueued_at_us|-`.
    pub fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        let Some(entries) = &self.entries else {
            return Ok(());
        };
        let entries = entries.lock().expect("tally lock");
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the probe tally {}", path.display()))?;
        let mut out = BufWriter::new(file);
        for e in entries.iter() {
            match e.enqueued_at_us {
                Some(at) => writeln!(out, "{} {} {} {}", e.n, e.attempt, e.started_at_us, at)?,
                None => writeln!(out, "{} {} {} -", e.n, e.attempt, e.started_at_us)?,
            }
        }
        out.flush()
            .with_context(|| format!("writing the probe tally {}", path.display()))?;
        Ok(())
    }
}

/// Reads a file written by [`ProbeTally::write_to`].
pub fn read_tally(path: &Path) -> anyhow::Result<Vec<TallyEntry>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the probe tally {}", path.display()))?;
    let mut entries = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| -> Option<TallyEntry> {
            let [n, attempt, started, enqueued] = fields.as_slice() else {
                return None;
            };
            Some(TallyEntry {
                n: n.parse().ok()?,
                attempt: attempt.parse().ok()?,
                started_at_us: started.parse().ok()?,
                enqueued_at_us: match *enqueued {
                    "-" => None,
                    v => Some(v.parse().ok()?),
                },
            })
        })();
        entries.push(parsed.with_context(|| {
            format!(
                "{} line {}: malformed tally line {line:?}",
                path.display(),
                i + 1
            )
        })?);
    }
    Ok(entries)
}
