//! Gateway API HTTPRoutes in a cluster: mesh-control (`--registry
//! kubernetes`) is ready without the HTTPRoute CRD, notices it when the
//! cluster's owner installs it afterwards, and from then routes by every
//! HTTPRoute whose parent is a Service (GAMMA): through real sidecars, a
//! header match sends canary requests to v2 and nothing else does. Each
//! such route's `status.parents[]` gets mesh's entry (controllerName
//! `mesh.dev/mesh-control`, Accepted and ResolvedRefs with the route's
//! generation) beside another controller's entry, which is kept. A route
//! whose parents are all Gateways belongs to an ingress implementation: the
//! webhook admits it unread and mesh writes no status on it. A bad mesh
//! route is refused by the webhook in meshctl apply's words.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
mod support;

use kube_api::{KubeApi, kubectl_ok};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::load::{self, Shape};
use support::{Mesh, TempDir};

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/gateway-api-httproutes.yaml"
);
const CONTROLLER: &str = "mesh.dev/mesh-control";

fn route(name: &str, parent: &str, canary_to: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
spec:
  parentRefs:
  - {parent}
  rules:
  - name: canary
    matches:
    - headers:
      - name: x-canary
        value: \"true\"
    backendRefs:
    - name: {canary_to}
      port: 80
  - name: stable
    backendRefs:
    - name: echo-v1
      port: 80
"
    )
}

fn stored(api: &KubeApi, name: &str) -> Option<Value> {
    api.object("gateway.networking.k8s.io/httproutes", "default", name)
}

/// Waits until HTTPRoute `name` carries mesh's parent entry with
/// Accepted `accepted` for `generation` (and, when True, ResolvedRefs
/// True); returns the route as kubectl reads it.
async fn wait_judged(api: &KubeApi, name: &str, generation: i64, accepted: &str) -> Value {
    let end = Instant::now() + support::DEADLINE;
    loop {
        let out = kubectl_ok(api, &["get", "httproute", name, "-o", "json"]).await;
        let obj: Value = serde_json::from_str(&out).unwrap();
        let parents = obj["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ours = parents.iter().find(|p| p["controllerName"] == CONTROLLER);
        let holds = |type_: &str, status: &str| {
            ours.and_then(|p| p["conditions"].as_array())
                .and_then(|c| c.iter().find(|c| c["type"] == type_))
                .is_some_and(|c| c["status"] == status && c["observedGeneration"] == generation)
        };
        if holds("Accepted", accepted) && (accepted == "False" || holds("ResolvedRefs", "True")) {
            return obj;
        }
        assert!(
            Instant::now() < end,
            "{name} never got mesh's Accepted={accepted} for generation {generation}: {}",
            obj["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_accepted(api: &KubeApi, name: &str, generation: i64) -> Value {
    wait_judged(api, name, generation, "True").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn httproutes_with_a_service_parent_route_once_their_crd_is_installed() {
    kube_api::real_cluster_ignored();
    let dir = TempDir::new("kube-gateway");
    let api = KubeApi::start(&dir.0).await;
    kube_api::install_crds(&api).await;
    let args = kube_api::control_args(&api);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Ready (start_with_args waits on /ready) with no HTTPRoute CRD at all.
    let mesh = Mesh::start_with_args("kube-gateway", &args).await;
    let tokens = kube_api::accounts(&api, &dir.0, &["echo", "client"]).await;
    let with_token = [("MESH_PROXY_IDENTITY_TOKEN_FILE", tokens[0].as_str())];
    let insts = [
        mesh.instance_with("echo", "v1", "echo-v1-a", &[], None, &with_token)
            .await,
        mesh.instance_with("echo", "v2", "echo-v2-a", &[], None, &with_token)
            .await,
    ];
    kube_api::create(&api, &dir.0, "service.yaml", kube_api::ECHO_SERVICE).await;
    for (inst, v) in insts.iter().zip(["v1", "v2"]) {
        let port = inst.sidecar.addr("inbound").unwrap().port();
        let yaml = kube_api::echo_objects(&inst.id, port, v);
        kube_api::create(&api, &dir.0, &format!("{}.yaml", inst.id), &yaml).await;
    }
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let client = mesh
        .client_with(
            "client-0",
            &[("MESH_PROXY_IDENTITY_TOKEN_FILE", tokens[1].as_str())],
        )
        .await;

    // install/'s webhooks, pointed at this replica, their caBundle set.
    let url = format!(
        "https://{}/validate",
        mesh.control.addr("webhook").expect("the webhook's address")
    );
    let roots = std::fs::read_to_string(&mesh.roots).unwrap();
    kube_api::install_webhooks(&api, &url, &roots).await;

    // The cluster's owner installs Gateway API after mesh; then a route.
    kubectl_ok(&api, &["create", "--validate=false", "-f", CRD]).await;
    let service_parent = "{group: \"\", kind: Service, name: echo, port: 80}";
    let before = mesh.version().await;
    let canary = route("echo-canary", service_parent, "echo-v2");
    kube_api::create(&api, &dir.0, "canary.yaml", &canary).await;
    support::wait_for_version(&mesh, &client, before).await;
    let routed = wait_accepted(&api, "echo-canary", 1).await;
    let ours: Vec<&Value> = routed["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["controllerName"] == CONTROLLER)
        .collect();
    assert_eq!(ours.len(), 1, "one entry per Service parent: {ours:?}");
    assert_eq!(ours[0]["parentRef"]["name"], "echo");
    assert_eq!(ours[0]["parentRef"]["kind"], "Service");

    // Real traffic through the client's sidecar: canaries to v2 alone.
    let answered_by = |replies: &[load::Reply], version: &str| {
        let by = |r: &&load::Reply| r.status == 200 && r.version.as_deref() == Some(version);
        replies.iter().filter(by).count()
    };
    let tagged = Shape::get("echo").header("x-canary", "true");
    let replies = load::many(client.outbound, &tagged, 100, 8).await;
    assert_eq!(
        answered_by(&replies, "v2"),
        100,
        "every canary request reaches v2"
    );
    let replies = load::many(client.outbound, &Shape::get("echo"), 100, 8).await;
    assert_eq!(
        answered_by(&replies, "v1"),
        100,
        "every other request reaches v1"
    );

    // Another controller's entry is kept when mesh writes its own.
    let theirs = r#"{"status":{"parents":[{"parentRef":{"name":"ingress"},"controllerName":"example.com/ingress","conditions":[]}]}}"#;
    let status = ["patch", "httproute", "echo-canary", "--subresource=status"];
    kubectl_ok(
        &api,
        &[&status[..], &["--type=merge", "-p", theirs]].concat(),
    )
    .await;
    let both = wait_accepted(&api, "echo-canary", 1).await;
    let controllers: Vec<&str> = both["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["controllerName"].as_str())
        .collect();
    assert!(
        controllers.contains(&"example.com/ingress") && controllers.contains(&CONTROLLER),
        "{controllers:?}"
    );

    // An ingress's route (a Gateway parent) is admitted unread, even one
    // mesh would refuse (a backend that does not exist, a bad regex).
    let ingress = route("ingress-route", "{name: public-gateway}", "no-such-service").replace(
        "value: \"true\"",
        "type: RegularExpression\n        value: \"(\"",
    );
    let (ok, said) = kube_api::try_create(&api, &dir.0, "ingress.yaml", &ingress).await;
    assert!(ok, "{said}");

    // A mesh route with that regex is refused in meshctl apply's words.
    let local = Mesh::start("gateway-local").await;
    let bad = ingress
        .replace("ingress-route", "echo-bad")
        .replace("{name: public-gateway}", service_parent)
        .replace("no-such-service", "echo-v2");
    let problem = local.refused("bad.yaml", &bad).await.remove(0);
    let (ok, said) = kube_api::try_create(&api, &dir.0, "bad.yaml", &bad).await;
    eprintln!("kubectl create -f bad.yaml said: {}", said.trim());
    assert!(!ok, "a route with a bad regex was stored");
    let denied =
        format!(r#"admission webhook "httproutes.mesh.dev" denied the request: {problem}"#);
    assert!(
        said.contains(&denied),
        "kubectl said {said:?}, meshctl said {problem:?}"
    );
    assert!(stored(&api, "echo-bad").is_none());

    // A change to the mesh route after the ingress route was written: once
    // it is accepted, mesh has read the ingress route too, and wrote it
    // no status.
    let edit = r#"{"spec":{"rules":[{"name":"canary","matches":[{"headers":[{"name":"x-canary","value":"yes"}]}],"backendRefs":[{"name":"echo-v2","port":80}]},{"name":"stable","backendRefs":[{"name":"echo-v1","port":80}]}]}}"#;
    kubectl_ok(
        &api,
        &[
            "patch",
            "httproute",
            "echo-canary",
            "--type=merge",
            "-p",
            edit,
        ],
    )
    .await;
    wait_accepted(&api, "echo-canary", 2).await;
    let ingress = stored(&api, "ingress-route").expect("the ingress route is stored");
    assert!(
        ingress["status"]["parents"]
            .as_array()
            .is_none_or(|p| p.iter().all(|p| p["controllerName"] != CONTROLLER)),
        "mesh wrote status on an ingress's route: {}",
        ingress["status"]
    );

    // Written while no webhook guards the API (its configuration deleted
    // here): stored, never applied. Accepted=False says why, the last
    // valid generation keeps routing, and meshctl check names the route.
    kubectl_ok(
        &api,
        &["delete", "validatingwebhookconfiguration", "mesh-control"],
    )
    .await;
    let broken = edit.replace(
        r#""value":"yes""#,
        r#""type":"RegularExpression","value":"(""#,
    );
    kubectl_ok(
        &api,
        &[
            "patch",
            "httproute",
            "echo-canary",
            "--type=merge",
            "-p",
            &broken,
        ],
    )
    .await;
    let refused = wait_judged(&api, "echo-canary", 3, "False").await;
    let why = refused["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
        .and_then(|p| {
            p["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted")
                .cloned()
        })
        .expect("mesh's Accepted");
    assert_eq!(why["reason"], "Invalid");
    assert!(
        why["message"]
            .as_str()
            .unwrap_or("")
            .contains("does not compile"),
        "{why}"
    );
    let yes = Shape::get("echo").header("x-canary", "yes");
    let replies = load::many(client.outbound, &yes, 50, 8).await;
    assert_eq!(
        answered_by(&replies, "v2"),
        50,
        "generation 2 keeps routing"
    );
    let check = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("check")
        .output()
        .await
        .expect("meshctl runs");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{said}");
    assert!(
        said.contains("HTTPRoute default/echo-canary is REFUSED (generation 3)"),
        "{said}"
    );
}
