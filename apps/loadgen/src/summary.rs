//! The closing table of a benchmark run: each scenario appends its verdict rows to the file
//! named by `LOADGEN_SUMMARY` (when set), and `loadgen summary` prints them as one Markdown
//! table (route, figure, ceiling, ratio, target, verdict), ready for BENCHMARKS.md.

use std::io::Write as _;

/// One row: what was measured, against what, and whether it met its target.
pub(crate) struct Row<'a> {
    pub(crate) route: &'a str,
    pub(crate) figure: String,
    pub(crate) ceiling: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: &'a str,
    pub(crate) met: bool,
}

impl<'a> Row<'a> {
    /// A read route against the hello-world route of the same run: its ratio at least
    /// `min_ratio` and its p99 at most 5 ms.
    pub(crate) fn against_hello(
        route: &'a str,
        report: &crate::harness::Report,
        hello: &crate::harness::Report,
        min_ratio: f64,
        target: &'a str,
    ) -> Self {
        let ratio = report.rps() / hello.rps();
        Row {
            route,
            figure: rate(report),
            ceiling: format!("hello-world {}", rate(hello)),
            ratio: Some(ratio),
            target,
            met: ratio >= min_ratio && report.percentile_ms(0.99) <= 5.0,
        }
    }

    /// Appends the row to the summary file, if the run keeps one.
    pub(crate) fn record(&self) {
        let Ok(path) = std::env::var("LOADGEN_SUMMARY") else {
            return;
        };
        let line = [
            self.route.to_owned(),
            self.figure.clone(),
            self.ceiling.clone(),
            self.ratio.map_or_else(String::new, |r| format!("{r:.3}")),
            self.target.to_owned(),
            if self.met { "met" } else { "**missed**" }.to_owned(),
        ]
        .map(|cell| cell.replace(['\t', '\n'], " "))
        .join("\t");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("could not append to LOADGEN_SUMMARY={path}: {e}");
        }
    }
}

/// `figure req/s, p99 x ms` of a report.
pub(crate) fn rate(report: &crate::harness::Report) -> String {
    format!(
        "{} req/s, p99 {:.2} ms",
        thousands(report.rps()),
        report.percentile_ms(0.99)
    )
}

/// `12,345` (rounded).
pub(crate) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// Prints the rows recorded in `path` as a Markdown table.
pub(crate) fn print(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    println!("| route | figure | ceiling | ratio | target | verdict |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for line in text.lines().filter(|l| !l.is_empty()) {
        println!("| {} |", line.split('\t').collect::<Vec<_>>().join(" | "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_separated() {
        assert_eq!(super::thousands(0.4), "0");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(51_734.6), "51,735");
        assert_eq!(super::thousands(1_234_567.0), "1,234,567");
    }
}
