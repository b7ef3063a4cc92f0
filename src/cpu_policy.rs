//! The kernel scheduling policy a worker process runs under.
//!
//! A worker's work is throughput: jobs per second and seconds of lag. The enqueuer's, and
//! PostgreSQL's on behalf of every client, is latency: a webhook waits on it. Where they share
//! cores, every wake-up of a worker thread (an HTTP answer from Monime, a row batch back from
//! the server) may preempt whatever runs at that moment, a webhook's commit included.
//! `SCHED_BATCH` keeps the worker's share of the CPU (the same weight as nice 0) and tells the
//! scheduler its wake-ups need not preempt; a worker alone on its cores runs as before.
//!
//! Linux sets the policy per thread and a thread inherits its creator's, so applying it on
//! the main thread before the runtime starts covers every thread of the process.

use std::fmt;

/// The policy for a worker process's threads (`WORKER_CPU_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuPolicy {
    /// `SCHED_BATCH`: the worker's wake-ups do not preempt the latency-bound processes
    /// beside it.
    Batch,
    /// `SCHED_OTHER`: the kernel's default for every process.
    Normal,
}

/// Spelled as the setting takes it (`batch`, `normal`).
impl fmt::Display for CpuPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use clap::ValueEnum;
        let name = self.to_possible_value().expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

/// Puts the calling thread, and every thread it starts from now on, under `policy`. Call it
/// before the runtime's threads exist.
#[cfg(target_os = "linux")]
pub fn apply(policy: CpuPolicy) -> std::io::Result<()> {
    let kernel_policy = match policy {
        CpuPolicy::Batch => libc::SCHED_BATCH,
        CpuPolicy::Normal => libc::SCHED_OTHER,
    };
    // Both policies take priority 0; thread id 0 is the calling thread.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only reads it.
    let status = unsafe { libc::sched_setscheduler(0, kernel_policy, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Other systems keep their default scheduling.
#[cfg(not(target_os = "linux"))]
pub fn apply(_policy: CpuPolicy) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CpuPolicy;
    use clap::ValueEnum;

    #[test]
    fn a_policy_prints_as_the_setting_spells_it() {
        for policy in CpuPolicy::value_variants() {
            let printed = policy.to_string();
            assert_eq!(CpuPolicy::from_str(&printed, false), Ok(*policy));
        }
        assert_eq!(CpuPolicy::Batch.to_string(), "batch");
    }
}
