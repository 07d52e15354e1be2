//! Automatic sidecar injection, end to end: mesh-control
//! (`--registry kubernetes --webhook-addr`) serves the mutating webhook of
//! install/'s MutatingWebhookConfiguration over HTTPS with a certificate
//! from the mesh CA and keeps its caBundle; the Kubernetes API test server
//! calls it on every Pod created, as a real API server does, and stores
//! the Pod with the JSONPatch applied. The machine's kubectl creates the
//! Pods as the ReplicaSet controller would (generateName, an owner). With
//! the control plane down, Pods of opted-in namespaces are refused
//! (failurePolicy Fail) and every other Pod, kube-system's included, is
//! still created.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
mod support;

use kube_api::{KubeApi, kubectl_ok};
use serde_json::Value;
use support::{Mesh, TempDir};

/// A Deployment's Pod as its ReplicaSet controller creates it.
fn replica(namespace: &str, labels: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  generateName: web-7d4b9c-
  namespace: {namespace}
  labels: {{app: web, pod-template-hash: 7d4b9c{labels}}}
  annotations: {{team: shop{annotations}}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c, uid: 5b1d2f7e-0000-4000-8000-000000000001, controller: true, blockOwnerDeletion: true}}
spec:
  containers:
  - name: web
    image: registry.example/web:1.4
    ports: [{{containerPort: 8080, protocol: TCP}}]
"
    )
}

/// Creates the Pod with kubectl; the stored Pod, or what kubectl said.
async fn create(api: &KubeApi, dir: &TempDir, file: &str, yaml: &str) -> Result<Value, String> {
    let path = dir.0.join(file);
    std::fs::write(&path, yaml).unwrap();
    let args = ["create", "--validate=false", "-o", "json", "-f"];
    let out = kube_api::kubectl(api, &[&args[..], &[path.to_str().unwrap()]].concat()).await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ns = created["metadata"]["namespace"].as_str().unwrap();
    let name = created["metadata"]["name"].as_str().unwrap();
    Ok(api
        .object("/pods", ns, name)
        .expect("the Pod kubectl created is stored"))
}

fn inits(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_of_opted_in_namespaces_are_stored_injected_and_an_outage_blocks_nobody_else() {
    kube_api::real_cluster_ignored();
    let dir = TempDir::new("kube-inject");
    let api = KubeApi::start(&dir.0).await;
    kube_api::install_crds(&api).await;
    let args = kube_api::control_args(&api);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut mesh = Mesh::start_with_args("kube-inject", &args).await;
    let webhook = mesh.control.addr("webhook").expect("the webhook's address");
    let roots = std::fs::read_to_string(&mesh.roots).unwrap();
    kube_api::install_webhook_file(
        &api,
        "mutating-webhook.yaml",
        &format!("https://{webhook}"),
        &roots,
    )
    .await;
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";
    kube_api::create(&api, &dir.0, "namespaces.yaml", namespaces).await;
    kubectl_ok(
        &api,
        &["label", "namespace", "shop", "mesh.dev/inject=enabled"],
    )
    .await;

    // An opted-in namespace: stored with the redirect step and the native
    // sidecar first, the token volume, and the status annotation; the
    // app's container and everything else as sent.
    let sent: Value = serde_saphyr::from_str(&replica("shop", "", "")).unwrap();
    let pod = create(&api, &dir, "shop.yaml", &replica("shop", "", ""))
        .await
        .unwrap();
    assert_eq!(inits(&pod), ["mesh-init", "mesh-proxy"], "{pod}");
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("MESH_PROXY_CONTROL_ROOTS"),
        Some(Value::String(roots.clone()))
    );
    assert_eq!(env("MESH_PROXY_SERVICE"), Some("web".into()));
    assert_eq!(pod["spec"]["containers"], sent["spec"]["containers"]);
    assert_eq!(
        pod["metadata"]["ownerReferences"],
        sent["metadata"]["ownerReferences"]
    );
    assert_eq!(pod["metadata"]["annotations"]["team"], "shop");
    // Exactly what injection adds, and nothing else: uninjecting the
    // stored Pod gives the Pod as sent (the server's own fields aside).
    let mut back = mesh_control::inject::uninject(&pod).unwrap();
    for server_set in [
        "name",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        back["metadata"].as_object_mut().unwrap().remove(server_set);
    }
    assert_eq!(back, sent);

    // An unlabeled namespace: stored as sent; unless the Pod opts in.
    let pod = create(&api, &dir, "plain.yaml", &replica("plain", "", ""))
        .await
        .unwrap();
    assert!(inits(&pod).is_empty(), "{pod}");
    let opted = replica("plain", ", mesh.dev/inject: enabled", "");
    let pod = create(&api, &dir, "opted.yaml", &opted).await.unwrap();
    assert_eq!(inits(&pod), ["mesh-init", "mesh-proxy"]);
    // A Pod of the opted-in namespace that opts out.
    let out = replica("shop", ", mesh.dev/inject: disabled", "");
    let pod = create(&api, &dir, "out.yaml", &out).await.unwrap();
    assert!(inits(&pod).is_empty(), "{pod}");

    // A bad annotation: refused by the webhook, naming it; nothing stored.
    let pods_before = api.pods();
    let bad = replica("shop", "", ", mesh.dev/skip-outbound-cidrs: 10.0.0.0/99");
    let said = create(&api, &dir, "bad.yaml", &bad).await.unwrap_err();
    assert!(
        said.contains(r#"admission webhook "namespace.inject.mesh.dev" denied the request: mesh cannot inject this Pod: mesh.dev/skip-outbound-cidrs: "10.0.0.0/99""#),
        "{said}"
    );
    assert_eq!(api.pods(), pods_before, "nothing stored");

    // The control plane down: the opted-in namespace's Pods are refused,
    // and every other namespace's, kube-system's first, are created.
    mesh.kill_control().await;
    let said = create(&api, &dir, "down.yaml", &replica("shop", "", ""))
        .await
        .unwrap_err();
    assert!(said.contains("failed calling webhook"), "{said}");
    for ns in ["kube-system", "plain"] {
        let pod = create(&api, &dir, &format!("{ns}-down.yaml"), &replica(ns, "", ""))
            .await
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
        assert!(inits(&pod).is_empty());
    }
    // A Pod opting in by itself in an unmeshed namespace fails open.
    let pod = create(&api, &dir, "opted-down.yaml", &opted).await.unwrap();
    assert!(inits(&pod).is_empty());
}
