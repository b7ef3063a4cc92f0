//! The console's page shell and the small pieces every page shows: states in colour, ages,
//! money. Styles are inlined from `console.css`, so a page needs nothing but itself.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::Session;

const CSS: &str = include_str!("console.css");

/// The sections of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/admin", "Overview"),
    ("/admin/jobs", "Jobs"),
    ("/admin/queues", "Queues"),
    ("/admin/cycles", "Cycles"),
    ("/admin/transfers", "Transfers"),
    ("/admin/audit", "Audit"),
];

/// What a page asks of its shell.
pub struct Page<'a> {
    pub title: &'a str,
    /// The section lit in the navigation bar.
    pub section: &'a str,
    /// Reload the page every this many seconds (a live view without JavaScript).
    pub refresh_s: Option<u32>,
}

impl<'a> Page<'a> {
    pub fn new(title: &'a str, section: &'a str) -> Self {
        Page {
            title,
            section,
            refresh_s: None,
        }
    }

    pub fn refreshing(mut self, seconds: u32) -> Self {
        self.refresh_s = Some(seconds);
        self
    }

    /// The whole page for a logged-in user: navigation, logout, `body`.
    pub fn render(self, session: &Session, body: Markup) -> Markup {
        html! {
            (head(self.title, self.refresh_s))
            body {
                header.bar {
                    a.brand href="/admin" { "Poda" }
                    nav {
                        @for (path, label) in NAV {
                            a href=(path) class=@if *path == self.section { "on" } { (label) }
                        }
                    }
                    form.logout method="post" action="/admin/logout" {
                        (csrf_field(session))
                        button.link type="submit" { "Log out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation: the login form, errors.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (head(title, None))
        body.bare { main { (body) } }
    }
}

fn head(title: &str, refresh_s: Option<u32>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(s) = refresh_s { meta http-equiv="refresh" content=(s); }
            title { (title) " · Poda" }
            style { (PreEscaped(CSS)) }
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

/// A one-button form that POSTs to `action`.
pub fn action_button(session: &Session, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(session))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A state as a coloured badge; the colour comes from the state's name.
pub fn badge(state: &str) -> Markup {
    let tone = match state {
        "completed" | "Active" | "Completed" | "ok" => "good",
        "failed" | "Failed" | "cancelled" => "bad",
        "running" | "processing" | "Initializing" => "busy",
        "paused" => "warn",
        _ => "idle",
    };
    html! { span class={"badge " (tone)} { (state) } }
}

/// An instant as UTC, with how long ago it was in its tooltip.
pub fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(ago(at)) { (at.format("%Y-%m-%d %H:%M:%S")) } }
}

pub fn time_opt(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

/// "12 s ago", "3 min ago", "2 h ago", "4 d ago"; "in 5 s" for the future.
pub fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let span = duration(n);
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Seconds as the largest whole unit: "45 s", "12 min", "3 h", "2 d".
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

/// Money in minor units as "SLE 1,234.50". Integer arithmetic only.
pub fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!(
        "{currency} {sign}{}.{:02}",
        thousands(minor / 100),
        minor % 100
    )
}

/// A whole number with thousands separators.
pub fn count(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", thousands(n.unsigned_abs()))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_formatted_from_minor_units() {
        assert_eq!(money(0, "SLE"), "SLE 0.00");
        assert_eq!(money(5, "SLE"), "SLE 0.05");
        assert_eq!(money(123_456_789, "USD"), "USD 1,234,567.89");
        assert_eq!(money(-1_050, "SLE"), "SLE -10.50");
    }

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(3 * 86_400), "3 d");
    }
}
