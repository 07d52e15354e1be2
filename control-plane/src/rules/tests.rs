//! The rule set across applies: conflicts named against the incoming
//! document, updates that are not conflicts, and `release shift`.

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
    let (_, s) = set.shift("default", "echo", "v2", 10).unwrap();
    let w: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
    assert_eq!(w, vec![68, 10, 22]);
    let (_, s) = set.shift("default", "echo", "v2", 100).unwrap();
    assert_eq!(
        s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        vec![0, 100, 0]
    );
    assert!(matches!(
        set.shift("default", "echo", "v9", 5),
        Err(ShiftError::UnknownBackend { .. })
    ));
    assert!(matches!(
        set.shift("default", "nope", "v1", 5),
        Err(ShiftError::NoSplit { .. })
    ));
    assert!(matches!(
        set.shift("default", "echo", "v1", 101),
        Err(ShiftError::Percent(101))
    ));
}
