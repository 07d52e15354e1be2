use super::*;
use serde_json::json;

pub(crate) fn template() -> Template {
    Template {
        image: "mesh/mesh-proxy:test".into(),
        pull_policy: "IfNotPresent".into(),
        control_addr: "https://mesh-control.mesh-system.svc:15010".into(),
        roots_pem: "-----BEGIN CERTIFICATE-----\nroots\n-----END CERTIFICATE-----\n".into(),
        trust_domain: "cluster.local".into(),
    }
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "echo-1", "labels": {"app": "echo", "version": "v1"}},
           "spec": {"serviceAccountName": "echo", "containers": [
               {"name": "echo", "image": "echo:1", "ports": [{"containerPort": 8080}]}]}})
}

fn env(pod: &Value, name: &str) -> Option<String> {
    pod["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn injected(p: &Value) -> Value {
    inject(p, "default", Namespace::OptedIn, &template())
        .unwrap()
        .unwrap()
}

#[test]
fn a_pod_gets_the_redirect_step_then_its_native_sidecar_and_the_token() {
    let out = injected(&pod());
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[0]["name"], INIT);
    assert_eq!(inits[0]["args"][0], "init");
    assert_eq!(
        inits[0]["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(inits[1]["name"], PROXY);
    assert_eq!(inits[1]["restartPolicy"], "Always");
    assert_eq!(inits[1]["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(env(&out, "MESH_PROXY_SERVICE").as_deref(), Some("echo"));
    assert_eq!(env(&out, "MESH_PROXY_VERSION").as_deref(), Some("v1"));
    assert_eq!(
        env(&out, "MESH_PROXY_APP_ADDR").as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(
        env(&out, "MESH_PROXY_CONTROL_ROOTS"),
        Some(template().roots_pem)
    );
    assert_eq!(
        out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "mesh"
    );
    // The app's own containers are untouched.
    assert_eq!(out["spec"]["containers"], pod()["spec"]["containers"]);
}

#[test]
fn injecting_twice_is_injecting_once_and_uninject_restores_the_pod_exactly() {
    let mut with_inits = pod();
    with_inits["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
    with_inits["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    with_inits["metadata"]["annotations"] = json!({"team": "a"});
    for original in [pod(), with_inits] {
        let once = injected(&original);
        assert_eq!(
            inject(&once, "default", Namespace::OptedIn, &template()).unwrap(),
            Err(Skip::Injected)
        );
        assert_eq!(uninject(&once).unwrap(), original);
        let names: Vec<&str> = once["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[..2], [INIT, PROXY], "ours run first: {names:?}");
    }
    // A pod never injected comes back as it is.
    assert_eq!(uninject(&pod()).unwrap(), pod());
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({STATUS: "{"});
    assert!(uninject(&bad).unwrap_err().to_string().starts_with(STATUS));
}

#[test]
fn pods_mesh_must_not_touch_are_left_saying_why() {
    let t = template();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = pod();
        f(&mut p);
        p
    };
    let host = with(&|p| p["spec"]["hostNetwork"] = json!(true));
    let off = with(&|p| p["metadata"]["annotations"] = json!({INJECT: "disabled"}));
    let on = with(&|p| p["metadata"]["labels"][INJECT] = json!("enabled"));
    let by_hand = with(&|p| {
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": PROXY, "image": "x"}))
    });
    let cases = [
        (
            &host,
            "default",
            Namespace::OptedIn,
            Some(Skip::HostNetwork),
        ),
        (
            &pod(),
            "kube-system",
            Namespace::OptedIn,
            Some(Skip::SystemNamespace("kube-system".into())),
        ),
        (&off, "default", Namespace::OptedIn, Some(Skip::Disabled)),
        (
            &pod(),
            "default",
            Namespace::NotOptedIn,
            Some(Skip::NotOptedIn),
        ),
        (
            &by_hand,
            "default",
            Namespace::OptedIn,
            Some(Skip::Injected),
        ),
        (&on, "default", Namespace::NotOptedIn, None),
    ];
    for (p, ns, opted, want) in cases {
        let got = inject(p, ns, opted, &t).unwrap().err();
        assert_eq!(got, want, "{p}");
    }
}

#[test]
fn annotations_override_the_sidecar_and_bad_ones_refuse_the_pod_whole() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({
        annotations::SKIP_OUTBOUND_CIDRS: "10.0.0.0/8",
        annotations::SKIP_INBOUND_PORTS: "9000",
        annotations::PROXY_MEMORY_LIMIT: "32Mi",
        annotations::PROXY_LOG_LEVEL: "debug",
        annotations::OPAQUE_PORTS: "7000",
    });
    let out = injected(&p);
    let args = out["spec"]["initContainers"][0]["args"].to_string();
    assert!(
        args.contains(r#""--skip-outbound-cidrs","10.0.0.0/8""#),
        "{args}"
    );
    assert!(
        args.contains(r#""--skip-inbound-ports","4191,9000""#),
        "{args}"
    );
    assert_eq!(
        out["spec"]["initContainers"][1]["resources"]["limits"]["memory"],
        "32Mi"
    );
    assert_eq!(env(&out, "MESH_PROXY_LOG").as_deref(), Some("debug"));
    assert_eq!(
        env(&out, "MESH_PROXY_OPAQUE_PORTS").as_deref(),
        Some("7000")
    );

    p["metadata"]["annotations"][annotations::SKIP_OUTBOUND_PORTS] = json!("http");
    p["metadata"]["annotations"][annotations::PROXY_CPU_LIMIT] = json!("many");
    let Refused(problems) = inject(&p, "default", Namespace::OptedIn, &template()).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("mesh.dev/skip-outbound-ports: \"http\""));
    assert!(problems[1].starts_with("mesh.dev/proxy-cpu-limit: \"many\""));
}

#[test]
fn a_pod_of_the_wrong_shape_is_refused_not_overwritten() {
    type Spoil = fn(&mut Value);
    let cases: [(&str, Spoil); 3] = [
        ("spec.initContainers", |p| {
            p["spec"]["initContainers"] = json!("x")
        }),
        ("metadata.annotations", |p| {
            p["metadata"]["annotations"] = json!([1])
        }),
        ("spec", |p| p["spec"] = json!(3)),
    ];
    for (field, spoil) in cases {
        let mut p = pod();
        spoil(&mut p);
        let e = inject(&p, "default", Namespace::OptedIn, &template()).unwrap_err();
        assert!(e.0.iter().any(|m| m.starts_with(field)), "{field}: {e}");
    }
}

#[test]
fn every_workload_kind_and_list_item_is_injected_and_uninjected() {
    let spec = pod();
    let template_of = json!({"metadata": spec["metadata"], "spec": spec["spec"]});
    let mut doc = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
         "spec": {"template": template_of}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "jobs"},
         "spec": {"jobTemplate": {"spec": {"template": template_of}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}},
    ]});
    let original = doc.clone();
    let reports = workloads::inject(&mut doc, &template()).unwrap();
    let objects: Vec<&str> = reports.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(objects, ["Deployment default/d", "CronJob jobs/c"]);
    assert!(reports.iter().all(|r| r.skipped.is_none()));
    assert_eq!(
        doc["items"][1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1]["name"],
        PROXY
    );
    assert_eq!(doc["items"][2], original["items"][2]);
    assert_eq!(workloads::uninject(&mut doc).unwrap(), 2);
    assert_eq!(doc, original);
}
