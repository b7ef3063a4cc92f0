//! Which periodic jobs a worker enqueues: the built-in schedules (`contribution-deadlines`,
//! and `reconcile-transfers` where Monime is configured) and the operator's own from
//! `WORKER_SCHEDULES`. See docs/periodic-jobs.md.
//!
//! `WORKER_SCHEDULES` holds entries separated by `;` (or new lines), each
//! `name=<cron>|<queue>|<kind>` with an optional `|<JSON payload>` (default `{}`):
//!
//! ```text
//! WORKER_SCHEDULES="nightly-probe=0 0 3 * * *|probe|probe|{\"n\":0}; tick=*/30 * * * * *|probe|probe"
//! ```
//!
//! The expression has 6 fields, seconds first, and is read in `SCHEDULE_TIMEZONE`.

use anyhow::{bail, Context};
use poda_jobs::cycle::deadlines;
use poda_jobs::engine::Schedule;
use poda_jobs::transfer::reconcile_job;

use crate::cli::ScheduleArgs;

/// The setting that disables a built-in schedule.
pub const OFF: &str = "off";

/// Whether `name` is one of the built-in schedules.
pub fn is_built_in(name: &str) -> bool {
    [deadlines::SCHEDULE, reconcile_job::SCHEDULE].contains(&name)
}

/// The schedules of a worker; `monime` says whether it can run the reconciliation. A bad
/// entry is an error that names it.
pub fn schedules(args: &ScheduleArgs, monime: bool) -> anyhow::Result<Vec<Schedule>> {
    let tz = args.schedule_timezone.trim();
    let mut all = Vec::new();
    let builtin = |name: &str, setting: &str, expression: &str, queue: &str, kind: &str| {
        Schedule::new(name, expression, tz, queue, kind, serde_json::json!({}))
            .with_context(|| format!("{setting} (SCHEDULE_TIMEZONE {tz:?})"))
    };
    let deadlines_expr = args.schedule_contribution_deadlines.trim();
    if !deadlines_expr.eq_ignore_ascii_case(OFF) {
        all.push(builtin(
            deadlines::SCHEDULE,
            "SCHEDULE_CONTRIBUTION_DEADLINES",
            deadlines_expr,
            deadlines::QUEUE,
            deadlines::KIND,
        )?);
    }
    let reconcile_expr = args.schedule_reconcile_transfers.trim();
    if !reconcile_expr.eq_ignore_ascii_case(OFF) {
        // Checked in every worker, enqueued only by those that can run it.
        let schedule = builtin(
            reconcile_job::SCHEDULE,
            "SCHEDULE_RECONCILE_TRANSFERS",
            reconcile_expr,
            reconcile_job::QUEUE,
            reconcile_job::KIND,
        )?;
        if monime {
            all.push(schedule);
        }
    }
    for entry in split_entries(&args.schedules) {
        let schedule = parse_entry(entry, tz)
            .with_context(|| format!("WORKER_SCHEDULES: the entry {entry:?}"))?;
        if all.iter().any(|s: &Schedule| s.name() == schedule.name())
            || is_built_in(schedule.name())
        {
            bail!(
                "WORKER_SCHEDULES: the entry {entry:?}: the name {:?} is taken (by a built-in or an earlier entry)",
                schedule.name()
            );
        }
        all.push(schedule);
    }
    Ok(all)
}

fn split_entries(text: &str) -> impl Iterator<Item = &str> {
    text.split([';', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// `name=<cron>|<queue>|<kind>[|<JSON payload>]`.
fn parse_entry(entry: &str, tz: &str) -> anyhow::Result<Schedule> {
    let Some((name, rest)) = entry.split_once('=') else {
        bail!("expected name=<cron>|<queue>|<kind>[|<JSON payload>]");
    };
    let mut parts = rest.splitn(4, '|');
    let expression = parts.next().unwrap_or_default();
    let (Some(queue), Some(kind)) = (parts.next(), parts.next()) else {
        bail!("expected name=<cron>|<queue>|<kind>[|<JSON payload>]: the queue or the kind is missing");
    };
    let payload = match parts.next().map(str::trim) {
        None | Some("") => serde_json::json!({}),
        Some(json) => serde_json::from_str(json)
            .with_context(|| format!("the payload {json:?} is not JSON"))?,
    };
    Ok(Schedule::new(
        name.trim(),
        expression,
        tz,
        queue,
        kind,
        payload,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schedules: &str) -> ScheduleArgs {
        ScheduleArgs {
            schedules: schedules.into(),
            schedule_timezone: "UTC".into(),
            schedule_reconcile_transfers: reconcile_job::DEFAULT_EXPRESSION.into(),
            schedule_contribution_deadlines: deadlines::DEFAULT_EXPRESSION.into(),
        }
    }

    #[test]
    fn entries_with_and_without_payload() {
        let all = schedules(
            &args("nightly=0 0 3 * * *|probe|probe|{\"n\":1};\n tick=*/30 * * * * *|q|k"),
            true,
        )
        .unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "contribution-deadlines",
                "reconcile-transfers",
                "nightly",
                "tick"
            ]
        );
        assert_eq!(all[3].expression(), "*/30 * * * * *");
        assert_eq!(all[3].queue(), "q");
    }

    #[test]
    fn reconcile_needs_monime_and_off_disables() {
        let mut a = args("");
        assert_eq!(schedules(&a, false).unwrap().len(), 1);
        a.schedule_contribution_deadlines = "off".into();
        assert!(schedules(&a, false).unwrap().is_empty());
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = format!(
            "{:#}",
            schedules(&args("ok=* * * * * *|q|k; broken=61 * * * * *|q|k"), true).unwrap_err()
        );
        assert!(err.contains("broken=61 * * * * *|q|k"), "{err}");
        let err = format!(
            "{:#}",
            schedules(&args("nopipe=* * * * * *"), true).unwrap_err()
        );
        assert!(err.contains("nopipe"), "{err}");
        let mut a = args("");
        a.schedule_timezone = "Nowhere/Town".into();
        let err = format!("{:#}", schedules(&a, true).unwrap_err());
        assert!(
            err.contains("Nowhere/Town") && err.contains("SCHEDULE_CONTRIBUTION_DEADLINES"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            schedules(&args("contribution-deadlines=* * * * * *|q|k"), true).unwrap_err()
        );
        assert!(err.contains("taken"), "{err}");
    }
}
