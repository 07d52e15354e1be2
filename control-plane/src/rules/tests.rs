//! Rules from documents and across applies: each split alone (every
//! problem at once), conflicts named against the incoming document,
//! updates that are not conflicts, and `release shift`.

use super::*;

fn parse(yaml: &str) -> Result<Vec<Split>, Vec<manifest::Error>> {
    let docs = manifest::parse("r.yaml", yaml)?;
    splits_from(&docs)
}

fn split_yaml(name: &str, root: &str, backends: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\nspec:\n  service: {root}\n  backends:\n"
    );
    for (b, w) in backends {
        s.push_str(&format!("  - service: {b}\n    weight: {w}\n"));
    }
    s
}

#[test]
fn two_splits_for_one_root_rejected_in_a_file_and_across_applies() {
    let two = format!(
        "{}---\n{}",
        split_yaml("a", "echo", &[("v1", "1")]),
        split_yaml("b", "echo", &[("v2", "1")])
    );
    let errs = parse(&two).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("already has TrafficSplit default/a"),
        "{errs:?}"
    );

    let docs_a = manifest::parse("a.yaml", &split_yaml("a", "echo", &[("v1", "1")])).unwrap();
    let (set, _) = RuleSet::default()
        .apply(
            &Incoming {
                splits: splits_from(&docs_a).unwrap(),
                ..Default::default()
            },
            &docs_a,
        )
        .unwrap();
    let docs_b = manifest::parse("b.yaml", &split_yaml("b", "echo", &[("v2", "1")])).unwrap();
    let errs = set
        .apply(
            &Incoming {
                splits: splits_from(&docs_b).unwrap(),
                ..Default::default()
            },
            &docs_b,
        )
        .unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("b.yaml:1: TrafficSplit default/b"),
        "{errs:?}"
    );
    // Re-applying the same name is an update, not a conflict.
    let docs_a2 = manifest::parse(
        "a.yaml",
        &split_yaml("a", "echo", &[("v1", "1"), ("v2", "1")]),
    )
    .unwrap();
    let (_, outcomes) = set
        .apply(
            &Incoming {
                splits: splits_from(&docs_a2).unwrap(),
                ..Default::default()
            },
            &docs_a2,
        )
        .unwrap();
    assert_eq!(outcomes[0].1, Outcome::Configured);
}

#[test]
fn shift_sums_to_100_and_keeps_proportions() {
    let docs = manifest::parse(
        "a.yaml",
        &split_yaml("a", "echo", &[("v1", "60"), ("v2", "0"), ("v3", "20")]),
    )
    .unwrap();
    let (set, _) = RuleSet::default()
        .apply(
            &Incoming {
                splits: splits_from(&docs).unwrap(),
                ..Default::default()
            },
            &docs,
        )
        .unwrap();
    let (_, s, what) = set.shift("default", "echo", "v2", 10, None).unwrap();
    assert_eq!(what, "TrafficSplit default/a");
    let w: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
    assert_eq!(w, vec![68, 10, 22]);
    let (_, s, _) = set.shift("default", "echo", "v2", 100, None).unwrap();
    assert_eq!(
        s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        vec![0, 100, 0]
    );
    // A release's shift: the rest to the stable alone, none to v3.
    let (_, s, _) = set.shift("default", "echo", "v2", 25, Some("v1")).unwrap();
    assert_eq!(
        s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        vec![75, 25, 0]
    );
    assert!(matches!(
        set.shift("default", "echo", "v2", 5, Some("v7")),
        Err(ShiftError::UnknownBackend { backend, .. }) if backend == "v7"
    ));
    assert!(matches!(
        set.shift("default", "echo", "v9", 5, None),
        Err(ShiftError::UnknownBackend { .. })
    ));
    assert!(matches!(
        set.shift("default", "nope", "v1", 5, None),
        Err(ShiftError::NoSplit { .. })
    ));
    assert!(matches!(
        set.shift("default", "echo", "v1", 101, None),
        Err(ShiftError::Percent(101))
    ));
}

#[test]
fn valid_split() {
    let s = parse(&split_yaml(
        "e",
        "echo",
        &[("echo-v1", "80"), ("echo-v2", "20")],
    ))
    .unwrap();
    assert_eq!(
        s[0].backends[1],
        Backend {
            service: "echo-v2".into(),
            weight: 20
        }
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs = parse(&split_yaml(
        "e",
        "echo",
        &[("echo", "-1"), ("echo-v2", "1.5")],
    ))
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("spec.backends[0].service") && t.contains("self-referential")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("spec.backends[0].weight") && t.contains("negative")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("spec.backends[1].weight") && t.contains("whole")),
        "{text:?}"
    );
}

#[test]
fn all_zero_weights_rejected() {
    let errs = parse(&split_yaml("e", "echo", &[("a", "0"), ("b", "0")])).unwrap_err();
    assert!(errs[0].problem.contains("every weight is 0"));
}

#[test]
fn shift_from_all_zero_others_splits_equally() {
    assert_eq!(split::largest_remainder(90, &[1, 1]), vec![45, 45]);
    assert_eq!(
        split::largest_remainder(100, &[1, 1, 1])
            .iter()
            .sum::<u64>(),
        100
    );
}
