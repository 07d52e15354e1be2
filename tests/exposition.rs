//! `/metrics` negotiates its format, and Prometheus' own tools read both.
//!
//! Prometheus "Exposition formats": a scraper says what it wants in
//! `Accept` (Prometheus 2 sends `application/openmetrics-text;version=1.0.0,
//! …,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`); the classic text format
//! (0.0.4) is the default. "Text format details": `# HELP` and `# TYPE` name
//! the metric as its samples do, so a counter's carry `_total`. OpenMetrics
//! 1.0 ("Text format", "Counter"): the family is named without `_total`,
//! `# EOF` ends the exposition.
//!
//! Parsed by `prometheus_client` (PyPI) in both formats and checked by
//! `promtool check metrics` (Debian's prometheus package), none of it ours;
//! `tests/setup.sh` installs them, and this test runs it when they are
//! missing. promtool reads only the classic format, so it checks that one;
//! the OpenMetrics body goes to the strict OpenMetrics parser.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use support::Mesh;
use support::load::{Shape, many};

const PROMETHEUS_2_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The tools, installed by tests/setup.sh if they are missing.
fn tools() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let have = || {
            Command::new("python3")
                .args(["-c", "import prometheus_client"])
                .status()
                .is_ok_and(|s| s.success())
                && Command::new("promtool")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
        };
        if !have() {
            let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/setup.sh");
            let ok = Command::new("bash").arg(setup).status();
            assert!(
                ok.is_ok_and(|s| s.success()) && have(),
                "prometheus_client (pip) and promtool (apt: prometheus) are needed; {setup} could not install them"
            );
        }
    });
}

fn run(cmd: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Families as `prometheus_client` parsed them, by name.
fn parse(format: &str, body: &str) -> BTreeMap<String, Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/parse_metrics.py");
    let out = run("python3", &[script, format], body);
    assert!(
        out.status.success(),
        "{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    families
        .into_iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f))
        .collect()
}

/// `mesh_requests_total` by (direction, status_code), from parsed families.
fn requests(families: &BTreeMap<String, Value>) -> BTreeMap<(String, String), f64> {
    let family = &families["mesh_requests"];
    assert_eq!(family["type"], "counter", "{family}");
    let mut by = BTreeMap::new();
    for s in family["samples"].as_array().unwrap() {
        assert_eq!(s["name"], "mesh_requests_total", "{s}");
        let l = &s["labels"];
        let key = (
            l["direction"].as_str().unwrap().to_string(),
            l["status_code"].as_str().unwrap().to_string(),
        );
        *by.entry(key).or_default() += s["value"].as_f64().unwrap();
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_are_read_by_prometheus_own_tools() {
    tools();
    let (_mesh, inst, client) = Mesh::one_instance("exposition", &[]).await;
    // Codes the default retry policy leaves alone, so each side counts them once.
    for (code, n) in [("200", 9), ("404", 4)] {
        let mut shape = Shape::get("echo");
        shape.path = format!("/?status={code}");
        many(client.outbound, &shape, n, 3).await;
    }
    for admin in [client.admin, inst.admin()] {
        let get = |accept| meshctl::traffic::get_accepting(admin, "/metrics", accept);
        let (status, text_type, text) = get(None).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(text_type, "text/plain; version=0.0.4; charset=utf-8");
        let (_, om_type, om) = get(Some(PROMETHEUS_2_ACCEPT)).await.unwrap();
        assert_eq!(
            om_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let (_, asked_text, _) = get(Some("text/plain;version=0.0.4")).await.unwrap();
        assert_eq!(asked_text, text_type);
        assert!(om.ends_with("# EOF\n") && !text.contains("# EOF"));

        // promtool lints the classic format: no problem at all.
        let lint = run("promtool", &["check", "metrics"], &text);
        assert!(
            lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
        // Both parsers type every family as the sidecar does, and count
        // what was sent.
        let (t, o) = (parse("text", &text), parse("openmetrics", &om));
        assert_eq!(
            t.keys().collect::<Vec<_>>(),
            o.keys().collect::<Vec<_>>(),
            "the same families in both formats"
        );
        for (name, f) in &t {
            assert_eq!(f["type"], o[name]["type"], "{name}: {f} vs {}", o[name]);
            assert_ne!(f["type"], "unknown", "{name} has no type: {f}");
        }
        let direction = if admin == client.admin {
            "outbound"
        } else {
            "inbound"
        };
        for by in [requests(&t), requests(&o)] {
            assert_eq!(
                by[&(direction.to_string(), "200".to_string())],
                9.0,
                "{by:?}"
            );
            assert_eq!(
                by[&(direction.to_string(), "404".to_string())],
                4.0,
                "{by:?}"
            );
        }
        let latency = &t["mesh_response_latency_seconds"];
        assert_eq!(latency["type"], "histogram");
    }
}
