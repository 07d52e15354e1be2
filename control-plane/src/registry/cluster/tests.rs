//! The conversion of Kubernetes objects into instances, from JSON as the
//! API server sends it.

use super::*;
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80, "name": "http"}]}}))
    .unwrap()
}

fn pod(name: &str, labels: serde_json::Value, account: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app"}]}}),
    )
    .unwrap()
}

fn slice(
    name: &str,
    service: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> EndpointSlice {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints}))
    .unwrap()
}

fn endpoint(ip: &str, pod: &str, conditions: serde_json::Value) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": conditions,
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
}

#[test]
fn endpoints_become_instances_of_the_service_and_its_version_subset() {
    let services = [service("echo")];
    let pods = [
        pod(
            "echo-a",
            json!({"app.kubernetes.io/version": "v1", "version": "ignored"}),
            "echo",
        ),
        pod("echo-b", json!({"version": "v2"}), "echo"),
    ];
    let slices = [slice(
        "echo-x",
        "echo",
        json!([{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8080}]),
        json!([
            endpoint("10.0.0.1", "echo-a", json!({"ready": true})),
            endpoint("10.0.0.2", "echo-b", json!({}))
        ]),
    )];
    let (c, problems) = convert(&services, &slices, &pods, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    let s = c.services();
    let echo = &s[&("default".into(), "echo".into())];
    assert_eq!(echo.len(), 2);
    assert_eq!(
        echo[0].address, "10.0.0.1:8080",
        "the HTTP port, not the first one"
    );
    assert_eq!(
        echo[0].version, "v1",
        "app.kubernetes.io/version wins over version"
    );
    assert_eq!(
        echo[0].identity,
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    assert_eq!(echo[0].instance_id, "echo-a");
    assert!(echo[1].ready, "a nil ready condition means ready");
    assert_eq!(
        s[&("default".into(), "echo-v2".into())][0].instance_id,
        "echo-b"
    );
    assert_eq!(c.account("default", "echo"), Some("echo"));
}

#[test]
fn not_ready_and_terminating_endpoints_leave_rotation() {
    let services = [service("echo")];
    let pods = [
        pod("a", json!({"version": "v1"}), "echo"),
        pod("b", json!({"version": "v1"}), "echo"),
    ];
    let slices = [slice(
        "echo-x",
        "echo",
        json!([{"port": 8080}]),
        json!([
            endpoint("10.0.0.1", "a", json!({"ready": false})),
            endpoint(
                "10.0.0.2",
                "b",
                json!({"ready": true, "serving": true, "terminating": true})
            )
        ]),
    )];
    let (c, _) = convert(&services, &slices, &pods, "cluster.local");
    assert_eq!(c.instances().filter(|i| i.ready).count(), 0);
    assert_eq!(
        c.instances().count(),
        2,
        "still known, so in-flight requests finish"
    );
}

#[test]
fn what_cannot_be_used_is_named_and_skipped() {
    let services = [service("echo")];
    let pods = [pod("a", json!({}), "echo")];
    let slices = [
        slice(
            "ghost-x",
            "ghost",
            json!([{"port": 80}]),
            json!([endpoint("10.0.0.9", "g", json!({}))]),
        ),
        slice(
            "echo-x",
            "echo",
            json!([{"port": 8080}]),
            json!([
                endpoint("10.0.0.1", "a", json!({})),
                endpoint("10.0.0.2", "missing", json!({})),
                {"addresses": ["not-an-ip"]},
            ]),
        ),
        slice(
            "echo-udp",
            "echo",
            json!([{"port": 53, "protocol": "UDP"}]),
            json!([endpoint("10.0.0.3", "a", json!({}))]),
        ),
    ];
    let (c, problems) = convert(&services, &slices, &pods, "cluster.local");
    let all = problems.join("\n");
    for want in [
        "EndpointSlice default/ghost-x: Service default/ghost is unknown",
        "Pod default/a: no app.kubernetes.io/version or version label",
        "its Pod missing is not known (yet); no version, no identity",
        "endpoints[2]: no IP address",
        "EndpointSlice default/echo-udp: no TCP port",
    ] {
        assert!(all.contains(want), "{want:?} not in:\n{all}");
    }
    let ids: Vec<(&str, &str, &str)> = c
        .instances()
        .map(|i| {
            (
                i.instance_id.as_str(),
                i.version.as_str(),
                i.identity.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("a", "", "spiffe://cluster.local/ns/default/sa/echo"),
            ("missing", "", "")
        ]
    );
    assert!(!c.knows("default", "ghost"));
}

#[test]
fn an_endpoint_in_two_slices_counts_once_and_ready_if_either_says_so() {
    let services = [service("echo")];
    let pods = [pod("a", json!({"version": "v1"}), "echo")];
    let slices = [
        slice(
            "old",
            "echo",
            json!([{"port": 8080}]),
            json!([endpoint("10.0.0.1", "a", json!({"ready": false}))]),
        ),
        slice(
            "new",
            "echo",
            json!([{"port": 8080}]),
            json!([endpoint("10.0.0.1", "a", json!({"ready": true}))]),
        ),
    ];
    let (c, _) = convert(&services, &slices, &pods, "cluster.local");
    let all: Vec<&Instance> = c.instances().collect();
    assert_eq!(all.len(), 1);
    assert!(all[0].ready);
}

#[test]
fn a_service_s_cluster_ips_are_its_virtual_ips_and_a_headless_one_has_none() {
    let with = |name: &str, spec: serde_json::Value| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    };
    let services = [
        with(
            "one",
            json!({"clusterIP": "10.96.4.7", "clusterIPs": ["10.96.4.7"]}),
        ),
        with(
            "dual",
            json!({"clusterIP": "10.96.4.8", "clusterIPs": ["10.96.4.8", "fd00::48"]}),
        ),
        with("old", json!({"clusterIP": "10.96.4.9"})),
        with(
            "headless",
            json!({"clusterIP": "None", "clusterIPs": ["None"]}),
        ),
    ];
    let (c, _) = convert(&services, &[], &[], "cluster.local");
    let vips = c.virtual_ips();
    let key = |n: &str| ("default".to_string(), n.to_string());
    assert_eq!(vips[&key("one")], ["10.96.4.7"]);
    assert_eq!(vips[&key("dual")], ["10.96.4.8", "fd00::48"]);
    assert_eq!(vips[&key("old")], ["10.96.4.9"]);
    assert!(!vips.contains_key(&key("headless")));
}
