//! What a running app answers: the Schemathesis contract run over its OpenAPI description, and
//! one metric from its `/metrics`.

use std::time::Duration;

use crate::unique_suffix;

/// The Schemathesis version the contract tests run (`supports/dev/stack test` installs it).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// What the contract tests check of every generated request: no server error, and every
/// response's status, content type and body as the OpenAPI description documents them.
const SCHEMATHESIS_CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Runs Schemathesis against the app at `base` (its `/openapi.json`) with `headers` on every
/// request: a fixed seed, a bounded number of cases per operation, every phase (coverage,
/// fuzzing, stateful). Panics with Schemathesis's report on any failure.
pub async fn schemathesis(base: &str, headers: &[(&str, &str)], max_examples: u32) {
    let bin = std::env::var("SCHEMATHESIS_BIN").unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/commerce-dev/schemathesis-{SCHEMATHESIS_VERSION}/bin/st")
    });
    assert!(
        std::path::Path::new(&bin).is_file(),
        "Schemathesis is not installed at {bin}: `supports/dev/stack test` installs \
         schemathesis=={SCHEMATHESIS_VERSION} (or set SCHEMATHESIS_BIN)"
    );
    let report = std::env::temp_dir().join(format!("schemathesis-{}", unique_suffix()));
    let mut command = tokio::process::Command::new(&bin);
    command
        .args(["--no-color", "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", SCHEMATHESIS_CHECKS])
        .args(["--seed", "1", "--max-examples", &max_examples.to_string()])
        .args(["--workers", "2", "--output-truncate", "false"])
        .arg("--report-dir")
        .arg(&report)
        .kill_on_drop(true);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let run = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("Schemathesis finished within 10 minutes")
        .expect("Schemathesis starts");
    let _ = std::fs::remove_dir_all(&report);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "Schemathesis found failures ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("passed") && !stdout.contains(" 0 generated"),
        "Schemathesis ran no cases:\n{stdout}"
    );
}

/// The value of a counter or gauge on `base`'s `/metrics`, `None` when it is not exported:
/// `name` is the series as exported, with its labels if it has any
/// (`orders_refused_total{reason="INSUFFICIENT_STOCK"}`).
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scraping {base}/metrics: {e}"))
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
