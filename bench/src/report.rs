//! The human summary: min/median/max of each figure over the runs, printed to stderr.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

#[derive(Debug, Default)]
pub struct Summary {
    /// (configuration, figure, values of every run), in insertion order.
    rows: Vec<(String, String, Vec<f64>)>,
    failures: usize,
}

impl Summary {
    pub fn add(&mut self, config: &str, figure: &str, value: f64) {
        match self
            .rows
            .iter_mut()
            .find(|(c, f, _)| c == config && f == figure)
        {
            Some((_, _, values)) => values.push(value),
            None => self
                .rows
                .push((config.to_owned(), figure.to_owned(), vec![value])),
        }
    }

    pub fn add_check(&mut self, ok: bool) {
        if !ok {
            self.failures += 1;
        }
    }

    pub fn failures(&self) -> usize {
        self.failures
    }

    pub fn table(&self) -> String {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(vec!["scenario", "figure", "runs", "min", "median", "max"]);
        for (config, figure, values) in &self.rows {
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            table.add_row(vec![
                config.clone(),
                figure.clone(),
                sorted.len().to_string(),
                format_value(sorted[0]),
                format_value(median(&sorted)),
                format_value(sorted[sorted.len() - 1]),
            ]);
        }
        table.to_string()
    }

    pub fn print(&self) {
        eprintln!("{}", self.table());
        if self.failures > 0 {
            eprintln!("{} run(s) FAILED the exactly-once check", self.failures);
        }
    }
}

pub fn median(sorted: &[f64]) -> f64 {
    let len = sorted.len();
    if len % 2 == 1 {
        sorted[len / 2]
    } else {
        (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
