//! The two text formats `/metrics` speaks and the choice between them: the
//! OpenMetrics 1.0 text prometheus-client writes, served to scrapers that
//! ask for it, and the classic Prometheus text format 0.0.4 (what a scraper
//! gets by default, and what `promtool` and every text-format parser read),
//! derived from the OpenMetrics text line by line.
//!
//! The formats differ in ways a parser notices (OpenMetrics spec, "Text
//! format"; Prometheus "Exposition formats", "Text format details"):
//! a counter family's `# HELP`/`# TYPE` name has no `_total` in OpenMetrics
//! and must equal the sample name in 0.0.4; OpenMetrics has `info` (0.0.4
//! has not: a gauge), `# UNIT`, exemplars and a closing `# EOF`, none of
//! which 0.0.4 knows.

/// A `/metrics` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The format for an `Accept` header (RFC 9110 §12.5.1): the acceptable
    /// media range with the highest `q` that names one of ours, the earlier
    /// on a tie. Without one (no header, `*/*`, or only types we do not
    /// serve) the classic text format, as the Prometheus client libraries
    /// answer.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Format::OpenMetrics
                }
                // 1.0.0 is 0.0.4 with UTF-8 names allowed; ours are legacy names.
                ("text/plain", None | Some("0.0.4" | "1.0.0")) => Format::Text,
                ("*/*" | "text/*", _) => Format::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text, |(_, f)| f)
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The classic text format of an OpenMetrics text.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // prometheus-client writes HELP before TYPE; the HELP name waits for
    // the TYPE to know whether it gains `_total`.
    let mut help: Option<(&str, &str)> = None;
    let mut family = ("", "");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind04) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                "stateset" => ("", "gauge"),
                "gaugehistogram" => ("", "histogram"),
                _ => ("", "untyped"),
            };
            match help.take() {
                Some((h, text)) if h == name => flush_help(&mut out, Some((h, text)), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind04}\n"));
            family = (name, kind);
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
            out.push('\n');
        } else {
            let sample = without_exemplar(line);
            let name = sample.split(['{', ' ']).next().unwrap_or("");
            // `_created` samples are a family's own in OpenMetrics and a
            // stray untyped series in 0.0.4.
            if name.strip_suffix("_created") == Some(family.0) && family.1 != "gauge" {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

/// A sample line without its OpenMetrics exemplar (` # {…} value`), which
/// 0.0.4 would read as part of the value. A `#` inside a quoted label value
/// is not one.
fn without_exemplar(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.x sends by default, and what 3.x sends.
    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROMETHEUS_3_TEXT_FIRST: &str =
        "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_the_scrapers_preference() {
        assert_eq!(Format::negotiate(Some(PROMETHEUS_2)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some(PROMETHEUS_3_TEXT_FIRST)),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // No header, anything, or only what we do not serve: the classic format.
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Text);
        // q=0 means "not this" (RFC 9110 §12.4.2).
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Text
        );
        // An OpenMetrics version we do not write is not ours to claim.
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
        // Case and spacing as clients write them.
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text ; Version=1.0.0 ; q=1")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn counters_info_units_exemplars_and_eof_become_the_classic_format() {
        let om = "# HELP mesh_requests Requests.\n# TYPE mesh_requests counter\n\
                  mesh_requests_total{route=\"a # b\"} 3 # {trace_id=\"1\"} 1.0\n\
                  mesh_requests_created 1.7e9\n\
                  # HELP mesh_latency_seconds Latency.\n# TYPE mesh_latency_seconds histogram\n# UNIT mesh_latency_seconds seconds\n\
                  mesh_latency_seconds_bucket{le=\"+Inf\"} 3\nmesh_latency_seconds_sum 0.5\nmesh_latency_seconds_count 3\n\
                  # HELP mesh_build Build.\n# TYPE mesh_build info\nmesh_build_info{version=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP mesh_requests_total Requests.\n# TYPE mesh_requests_total counter\n\
             mesh_requests_total{route=\"a # b\"} 3\n\
             # HELP mesh_latency_seconds Latency.\n# TYPE mesh_latency_seconds histogram\n\
             mesh_latency_seconds_bucket{le=\"+Inf\"} 3\nmesh_latency_seconds_sum 0.5\nmesh_latency_seconds_count 3\n\
             # HELP mesh_build_info Build.\n# TYPE mesh_build_info gauge\nmesh_build_info{version=\"1\"} 1\n"
        );
    }

    #[test]
    fn a_quoted_backslash_does_not_end_the_quote() {
        let line = r##"m_total{a="x\"#y\\"} 1 # {t="1"} 1"##;
        assert_eq!(without_exemplar(line), r##"m_total{a="x\"#y\\"} 1"##);
    }
}
