//! The release's pure parts: spec validation, the verdicts, the transitions.

use super::analysis::{Outcome, Sample, judge};
use super::machine::{Command, Phase, Record};
use super::spec::Spec;
use mesh_proto::v1 as pb;

fn spec() -> Spec {
    Spec::from_proto(&pb::ReleaseSpec {
        service: "echo".into(),
        stable: "echo-v1".into(),
        canary: "echo-v2".into(),
        steps: vec![10, 50, 100],
        interval_ms: 1_000,
        progress_deadline_ms: Some(5_000),
        ..Default::default()
    })
    .unwrap()
}

fn sample(requests: u64, failures: u64, p99_ms: f64) -> Sample {
    Sample {
        requests,
        failures,
        success_rate: (requests > 0).then(|| 100.0 * (1.0 - failures as f64 / requests as f64)),
        p99_ms: (requests > 0).then_some(p99_ms),
    }
}

#[test]
fn defaults_fill_in_and_every_bad_field_is_named_at_once() {
    let s = Spec::from_proto(&pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo-v2".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.steps, vec![5, 10, 25, 50, 100]);
    assert_eq!(
        (s.interval_ms, s.min_requests, s.failure_threshold),
        (30_000, 20, 2)
    );
    assert_eq!(
        (s.success_rate, s.p99_ms, s.namespace.as_str()),
        (99.0, 500.0, "default")
    );
    let by_weight = Spec::from_proto(&pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo-v2".into(),
        step_weight: 20,
        max_weight: 60,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(by_weight.steps, vec![20, 40, 60]);

    let problems = Spec::from_proto(&pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo".into(),
        steps: vec![10, 5, 101],
        interval_ms: 10,
        success_rate: Some(120.0),
        min_requests: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let want = [
        "spec.canary: \"echo\" is the service itself",
        "spec.steps[1]: 5 after 10: steps must ascend",
        "spec.steps[2]: 101 is not a percentage",
        "spec.interval: 10 ms is outside",
        "spec.analysis.successRate: 120 is not a percentage",
        "spec.analysis.minRequests: 0 would promote on no data",
    ];
    for w in want {
        assert!(text.iter().any(|t| t.contains(w)), "{w:?} not in {text:#?}");
    }
    assert_eq!(text.len(), want.len(), "{text:#?}");
    assert!(
        text[0].starts_with("<flags>: Release default/echo: "),
        "{}",
        text[0]
    );
}

#[test]
fn a_release_document_parses_with_its_durations_and_names_its_lines() {
    let doc = "apiVersion: mesh.dev/v1alpha1
kind: Release
metadata:
  name: echo
spec:
  service: echo
  canary: echo-v2
  steps: [20, 100]
  interval: 2s
  analysis:
    p99: 250ms
    progressDeadline: 1m
    compare:
      maxSuccessRateGap: 1
";
    let s = Spec::from_file("r.yaml", doc).unwrap();
    assert_eq!(
        (s.steps.clone(), s.interval_ms, s.p99_ms),
        (vec![20, 100], 2_000, 250.0)
    );
    assert_eq!(
        (s.progress_deadline_ms, s.max_success_gap),
        (60_000, Some(1.0))
    );
    let bad = doc
        .replace("interval: 2s", "interval: soon")
        .replace("name: echo\n", "name: other\n");
    let text: Vec<String> = Spec::from_file("r.yaml", &bad)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("r.yaml:1: Release default/other: spec.interval: ")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("metadata.name: \"other\" differs from spec.service")),
        "{text:?}"
    );
    let empty = Spec::from_file("r.yaml", "# nothing\n").unwrap_err();
    assert!(empty[0].problem.contains("no documents"), "{empty:?}");
}

#[test]
fn verdicts_name_the_metric_and_its_numbers() {
    let s = spec();
    let (o, d) = judge(&s, &sample(5, 0, 1.0), &sample(100, 0, 1.0));
    assert_eq!(
        (o, d.as_str()),
        (
            Outcome::NoData,
            "5 canary requests in the window, 20 needed"
        )
    );
    let (o, d) = judge(&s, &sample(100, 20, 3.0), &sample(100, 0, 1.0));
    assert_eq!(o, Outcome::Failed);
    assert!(d.contains("success rate 80.0% < 99.0%"), "{d}");
    let (o, d) = judge(&s, &sample(100, 0, 812.0), &Sample::default());
    assert_eq!(o, Outcome::Failed);
    assert!(d.contains("p99 812 ms > 500 ms"), "{d}");
    let (o, d) = judge(&s, &sample(100, 0, 12.0), &Sample::default());
    assert_eq!(o, Outcome::Passed);
    assert!(
        d.contains("success rate 100.0% ≥ 99.0%") && d.contains("100 canary requests"),
        "{d}"
    );

    // Against the stable: a canary inside the absolute thresholds can still
    // trail its stable by too much.
    let mut cmp = spec();
    cmp.success_rate = 90.0;
    cmp.max_success_gap = Some(1.0);
    cmp.max_p99_ratio = Some(2.0);
    let (o, d) = judge(&cmp, &sample(100, 5, 30.0), &sample(100, 0, 10.0));
    assert_eq!(o, Outcome::Failed);
    assert!(
        d.contains("5.0 points behind the stable's 100.0% > 1.0"),
        "{d}"
    );
    assert!(d.contains("p99 3.00× the stable's 10 ms > 2.00×"), "{d}");
    // A stable with too little traffic is not compared with.
    let (o, _) = judge(&cmp, &sample(100, 5, 30.0), &sample(3, 0, 10.0));
    assert_eq!(o, Outcome::Passed);
}

fn check(r: &mut Record, now: u64, canary: Sample) -> bool {
    let (o, d) = judge(&r.spec, &canary, &Sample::default());
    r.on_check(now, o, d, [canary, Sample::default()])
}

#[test]
fn passing_checks_walk_the_steps_and_promote() {
    let mut r = Record::new(1, spec(), 0);
    assert_eq!(
        (r.canary_weight, r.phase, r.pending),
        (10, Phase::Progressing, true)
    );
    assert!(!r.due(999) && r.due(1_000));
    assert!(check(&mut r, 1_000, sample(50, 0, 5.0)));
    assert_eq!((r.step, r.canary_weight), (1, 50));
    assert!(check(&mut r, 2_000, sample(50, 0, 5.0)));
    assert_eq!(r.canary_weight, 100);
    // Passing at 100% promotes; the weight is already there.
    assert!(!check(&mut r, 3_000, sample(50, 0, 5.0)));
    assert_eq!(
        (r.phase, r.finished_ms, r.next_check_ms),
        (Phase::Promoted, 3_000, 0)
    );
    assert!(r.pending, "the final weights are always written");
    assert_eq!(r.checks.len(), 3);
}

#[test]
fn failed_checks_in_a_row_roll_back_with_the_numbers() {
    let mut r = Record::new(1, spec(), 0);
    assert!(!check(&mut r, 1_000, sample(50, 10, 5.0)));
    assert_eq!((r.phase, r.failed_checks), (Phase::Progressing, 1));
    // A pass in between resets the count.
    check(&mut r, 2_000, sample(50, 0, 5.0));
    assert_eq!((r.failed_checks, r.canary_weight), (0, 50));
    check(&mut r, 3_000, sample(50, 10, 5.0));
    assert!(check(&mut r, 4_000, sample(50, 10, 5.0)));
    assert_eq!((r.phase, r.canary_weight), (Phase::RolledBack, 0));
    assert!(
        r.reason
            .starts_with("2 failed checks in a row at 50%: success rate 80.0% < 99.0%"),
        "{}",
        r.reason
    );
    assert!(r.command(5_000, Command::Resume, "op").is_err());
}

#[test]
fn no_traffic_waits_then_the_progress_deadline_rolls_back() {
    let mut r = Record::new(1, spec(), 0);
    for t in 1..5 {
        assert!(!check(&mut r, t * 1_000, sample(3, 0, 5.0)));
        assert_eq!(r.phase, Phase::WaitingForTraffic);
    }
    assert_eq!(r.checks.len(), 1, "one entry for the whole wait");
    assert_eq!(r.canary_weight, 10, "never promoted on no data");
    assert!(check(&mut r, 5_000, sample(3, 0, 5.0)));
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.reason
            .contains("progress deadline of 5 s: 3 canary requests"),
        "{}",
        r.reason
    );
    // None at all is named as such.
    let mut r = Record::new(1, spec(), 0);
    for t in 1..=5 {
        check(&mut r, t * 1_000, sample(0, 0, 0.0));
    }
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.reason.starts_with(
            "no progress for the progress deadline of 5 s (no canary traffic): 0 canary requests"
        ),
        "{}",
        r.reason
    );
}

#[test]
fn commands_pause_resume_promote_and_roll_back() {
    let mut r = Record::new(1, spec(), 0);
    r.command(100, Command::Pause, "alice").unwrap();
    assert_eq!((r.phase, r.next_check_ms), (Phase::Paused, 0));
    assert!(!r.due(10_000));
    assert!(r.command(200, Command::Pause, "alice").is_err());
    r.command(5_000, Command::Resume, "alice").unwrap();
    assert_eq!(
        (r.phase, r.step_started_ms, r.next_check_ms),
        (Phase::Progressing, 5_000, 6_000)
    );
    assert!(r.command(5_100, Command::Promote, "bob").unwrap());
    assert_eq!(r.canary_weight, 50);
    assert_eq!(r.checks.last().unwrap().outcome, Outcome::ByHand);
    assert!(r.command(5_200, Command::Rollback, "bob").unwrap());
    assert_eq!(
        (r.phase, r.canary_weight, r.reason.as_str()),
        (Phase::RolledBack, 0, "rolled back by bob")
    );

    let mut r = Record::new(2, spec(), 0);
    assert!(r.command(1, Command::PromoteFull, "bob").unwrap());
    assert_eq!((r.phase, r.canary_weight), (Phase::Promoted, 100));
    let mut r = Record::new(3, spec(), 0);
    assert!(r.command(1, Command::Abort, "bob").unwrap());
    assert_eq!((r.phase, r.canary_weight), (Phase::Aborted, 0));
}

#[test]
fn manual_promotion_waits_at_the_last_step() {
    let mut s = spec();
    s.manual_promotion = true;
    s.steps = vec![50];
    let mut r = Record::new(1, s, 0);
    check(&mut r, 1_000, sample(50, 0, 5.0));
    assert_eq!((r.phase, r.canary_weight), (Phase::WaitingForPromotion, 50));
    check(&mut r, 2_000, sample(50, 0, 5.0));
    assert_eq!(r.phase, Phase::WaitingForPromotion);
    // Still watched while it waits.
    check(&mut r, 3_000, sample(50, 25, 5.0));
    check(&mut r, 4_000, sample(50, 25, 5.0));
    assert_eq!(r.phase, Phase::RolledBack);
    let mut s = spec();
    s.manual_promotion = true;
    s.steps = vec![50];
    let mut r = Record::new(2, s, 0);
    check(&mut r, 1_000, sample(50, 0, 5.0));
    assert!(r.command(1_500, Command::Promote, "carol").unwrap());
    assert_eq!((r.phase, r.canary_weight), (Phase::Promoted, 100));
}

#[test]
fn webhooks_are_checked_field_by_field() {
    let hook = |name: &str, kind: &str, url: &str| pb::ReleaseWebhook {
        name: name.into(),
        r#type: kind.into(),
        url: url.into(),
        ..Default::default()
    };
    let mut raw = pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo-v2".into(),
        webhooks: vec![
            hook("gate", "pre-rollout", "http://127.0.0.1:9/pre"),
            hook("gate", "rollout", "http://127.0.0.1:9/r"),
            hook("x", "sometimes", "http://127.0.0.1:9/"),
            hook("y", "rollback", "ftp://hooks.example/"),
            hook("z", "rollback", "not a url"),
        ],
        ..Default::default()
    };
    raw.webhooks[0].retries = Some(9);
    let text: Vec<String> = Spec::from_proto(&raw)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let want = [
        "spec.webhooks[0].retries: 9 is more than the 5 allowed",
        "spec.webhooks[1].name: \"gate\" is used twice",
        "spec.webhooks[2].type: \"sometimes\" is not a hook",
        "spec.webhooks[3].url: \"ftp://hooks.example/\" is not an http(s)://host:port/path URL",
        "spec.webhooks[4].url: \"not a url\" is not an http(s)://host:port/path URL",
    ];
    for w in want {
        assert!(text.iter().any(|t| t.contains(w)), "{w:?} not in {text:#?}");
    }
    assert_eq!(text.len(), want.len(), "{text:#?}");
    raw.webhooks.truncate(1);
    raw.webhooks[0].retries = None;
    let s = Spec::from_proto(&raw).unwrap();
    let w = &s.webhooks[0];
    assert_eq!((w.timeout_ms, w.retries), (5_000, 2));
}

/// What `meshctl --kubeconfig release start` writes reads back, through
/// the code the controller reads a Release object with, as the same spec;
/// and a book rebuilt from objects' status resumes what they hold.
#[test]
fn a_release_object_round_trips_and_its_status_rebuilds_the_book() {
    let mut s = spec();
    s.max_success_gap = Some(1.5);
    s.webhooks = Spec::from_proto(&pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo-v2".into(),
        webhooks: vec![pb::ReleaseWebhook {
            name: "gate".into(),
            r#type: "confirm-promotion".into(),
            url: "https://127.0.0.1:9/gate".into(),
            // A caBundle travels base64 in the object and back.
            ca_bundle: rcgen::generate_simple_self_signed(vec!["hook".to_string()])
                .unwrap()
                .cert
                .pem()
                .into_bytes(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap()
    .webhooks;
    let manifest = super::cluster::manifest(&s);
    let obj: kube::api::DynamicObject = serde_json::from_value(manifest).unwrap();
    assert_eq!(super::cluster::spec_of(&obj).unwrap(), s);

    // One object under way, one finished with an older one in its history.
    let mut under_way = Record::new(7, s.clone(), 1_000);
    under_way.generation = Some(3);
    let mut done = Record::new(
        5,
        Spec {
            service: "other".into(),
            ..s.clone()
        },
        500,
    );
    done.command(600, Command::Abort, "test").unwrap();
    let mut older = done.clone();
    older.id = 2;
    let status = |r: &Record, history: Vec<Record>| super::cluster::Status::of(r, history);
    let found = |name: &str, st: super::cluster::Status| super::cluster::Found {
        namespace: "default".into(),
        name: name.into(),
        generation: 3,
        version: "1".into(),
        spec: Ok(s.clone()),
        status: st,
        command: None,
    };
    let book = super::book::Book::from_objects(&[
        found("echo", status(&under_way, vec![])),
        found("other", status(&done, vec![older])),
    ]);
    assert_eq!(book.next_id, 7);
    assert_eq!(book.active.keys().collect::<Vec<_>>(), ["default/echo"]);
    assert_eq!(book.latest("default/other").map(|r| r.id), Some(5));
    let st = book.status("default/other").unwrap();
    assert_eq!((st.phase.as_str(), st.history.len()), ("Aborted", 1));
    assert_eq!(
        book.status("default/echo").unwrap().observed_generation,
        Some(3)
    );
    assert_eq!(
        book.shields().len(),
        1,
        "the release under way shields its canary"
    );
}

mod https;
