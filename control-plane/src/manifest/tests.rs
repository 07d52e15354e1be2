//! Parsing rule files: documents, lines, numbers as written, and YAML
//! problems in the user's words.

use super::*;

const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: 80
  - service: echo-v2
    weight: 20
";

#[test]
fn parses_a_split_with_default_namespace() {
    let docs = parse("a.yaml", SPLIT).unwrap();
    let Document::TrafficSplit(s) = &docs[0].doc else {
        panic!("not a split")
    };
    assert_eq!(s.metadata.namespace, "default");
    assert_eq!(s.spec.backends[1].weight.as_weight(), Ok(20));
}

#[test]
fn multi_document_lines_are_absolute() {
    let bad = SPLIT.replace("weight: 20", "weight: 20\n    colour: red");
    let input = format!("{SPLIT}---\n{bad}");
    let errs = parse("rules.yaml", &input).unwrap_err();
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    assert!(msg.starts_with("rules.yaml:"), "{msg}");
    assert!(msg.contains("colour"), "{msg}");
    assert!(msg.contains("TrafficSplit default/echo"), "{msg}");
    assert!(errs[0].line > 12, "{msg}");
    // The first document is 11 lines and `---` the 12th; `colour` is
    // the second document's 12th line.
    assert_eq!(errs[0].line, 12 + 12, "{msg}");
    assert!(msg.starts_with("rules.yaml:24: "), "{msg}");
}

/// What the parser hands validation is the text as written, and
/// whether it was quoted: `weight: "20"` is a string, not 20.
#[test]
fn numbers_keep_their_spelling() {
    for (written, text, quoted) in [
        ("-3", "-3", false),
        ("2.5", "2.5", false),
        ("1e3", "1e3", false),
        ("0100", "0100", false),
        ("18446744073709551616", "18446744073709551616", false),
        ("\"20\"", "20", true),
        ("'20'", "20", true),
        ("{service: echo-v2, weight: 7}", "7", false),
    ] {
        let yaml = if written.starts_with('{') {
            SPLIT.replace(
                "- service: echo-v2\n    weight: 20",
                &format!("- {written}"),
            )
        } else {
            SPLIT.replace("weight: 20", &format!("weight: {written}"))
        };
        let docs = parse("a.yaml", &yaml).unwrap();
        let Document::TrafficSplit(s) = &docs[0].doc else {
            panic!()
        };
        assert_eq!(
            s.spec.backends[1].weight,
            meta::RawNumber {
                text: text.into(),
                quoted
            },
            "{written}"
        );
    }
}

/// Inside a filter (a struct serde buffers, for its `flatten`) too.
#[test]
fn numbers_keep_their_spelling_inside_filters() {
    let route = |percent: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n  - name: echo\n    kind: Service\n  rules:\n  - backendRefs:\n    - name: echo-v1\n    filters:\n    - type: RequestMirror\n      requestMirror:\n        backendRef:\n          name: shadow\n        percent: {percent}\n"
        )
    };
    for (written, text, quoted) in [
        ("50", "50", false),
        ("\"50\"", "50", true),
        ("5e1", "5e1", false),
    ] {
        let docs = parse("r.yaml", &route(written)).unwrap();
        let Document::HttpRoute(r) = &docs[0].doc else {
            panic!()
        };
        let mirror = r.spec.rules[0].filters[0].request_mirror.as_ref().unwrap();
        assert_eq!(
            mirror.percent,
            Some(meta::RawNumber {
                text: text.into(),
                quoted
            }),
            "{written}"
        );
    }
}

/// The parser's limits and rules in our words, never its options'.
#[test]
fn yaml_problems_speak_of_the_file_not_the_parser() {
    let dup = SPLIT.replace("  name: echo\n", "  name: echo\n  name: other\n");
    let e = &parse("d.yaml", &dup).unwrap_err()[0];
    assert_eq!(e.field.as_deref(), Some("name"));
    assert_eq!(e.line, 5);
    assert!(
        e.to_string()
            .ends_with("\"name\" appears twice in one mapping; give each key once"),
        "{e}"
    );
    let mut big = SPLIT.to_string();
    for _ in 0..130_000 {
        big.push_str("  - [1, 2]\n");
    }
    let e = parse("big.yaml", &big).unwrap_err()[0].to_string();
    assert!(
        e.contains("too large: more than 250000 YAML nodes") && !e.contains("Nodes {"),
        "{e}"
    );
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let errs = parse("x.yaml", "kind: TrafficSplit\nspec: [unclosed\n").unwrap_err();
    assert_eq!(errs[0].file, "x.yaml");
    assert!(!errs[0].problem.is_empty());
    assert_eq!(
        errs[0].line, 2,
        "the unclosed bracket's line: {:?}",
        errs[0]
    );
}

#[test]
fn unknown_kind_and_api_version() {
    let errs = parse("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err();
    assert!(errs[0].to_string().contains("unknown kind \"Pod\""));
    let errs = parse("x.yaml", &SPLIT.replace("v1alpha4", "v1alpha1")).unwrap_err();
    assert_eq!(errs[0].field.as_deref(), Some("apiVersion"));
}

#[test]
fn a_file_without_documents_is_refused_by_name() {
    for empty in [
        "",
        "\n\n",
        "# only a comment\n",
        "---\n",
        "---\n# c\n---\n...\n",
    ] {
        let errs = parse("rules.yaml", empty).unwrap_err();
        assert_eq!(errs.len(), 1, "{empty:?}");
        assert!(
            errs[0].to_string().starts_with("rules.yaml: no documents"),
            "{empty:?}: {}",
            errs[0]
        );
    }
}

#[test]
fn comments_and_empty_documents_are_skipped() {
    let docs = parse("x.yaml", &format!("# hello\n---\n{SPLIT}---\n")).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].line, 3);
}
