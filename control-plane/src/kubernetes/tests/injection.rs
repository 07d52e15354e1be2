//! AdmissionReview v1 requests shaped like the documentation's example
//! ("Request",
//! https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request),
//! each answered with the expected patch or refusal.

use super::*;
use serde_json::json;

fn review(namespace: &str, operation: &str, pod: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "014fbff9a07c", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
    .to_string()
    .into_bytes()
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "echo-7d4b9c-", "labels": {"app": "echo"}},
           "spec": {"containers": [{"name": "echo", "image": "echo:1",
                                    "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}})
}

/// The response, and the Pod its patch makes (the Pod itself if none).
fn answered(namespace: &str, opted: Namespace, p: &Value) -> (Value, Value) {
    let t = crate::inject::tests::template();
    let out = answer(&review(namespace, "CREATE", p), opted, &t).unwrap()["response"].clone();
    assert_eq!(out["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let mut patched = p.clone();
    if let Some(b64) = out["patch"].as_str() {
        assert_eq!(out["patchType"], "JSONPatch");
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
    }
    (out, patched)
}

#[test]
fn each_documented_shape_gets_the_expected_patch_or_refusal() {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = pod();
        f(&mut p);
        p
    };
    // A plain Pod, and one with init containers: patched, ours first.
    let inits = with(&|p| p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]));
    for p in [pod(), inits.clone()] {
        let (out, patched) = answered("default", Namespace::OptedIn, &p);
        assert_eq!(out["allowed"], true, "{out}");
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "mesh-init");
        assert_eq!(patched["spec"]["initContainers"][1]["name"], "mesh-proxy");
        assert_eq!(crate::inject::uninject(&patched).unwrap(), p);
        // Already injected: allowed, no patch; injecting twice is once.
        let (again, twice) = answered("default", Namespace::OptedIn, &patched);
        assert!(again["patch"].is_null(), "{again}");
        assert_eq!(twice, patched);
        assert_eq!(
            again["auditAnnotations"]["skipped"],
            "the pod already has mesh's sidecar"
        );
    }
    assert_eq!(
        answered("default", Namespace::OptedIn, &inits).1["spec"]["initContainers"][2]["name"],
        "migrate"
    );
    // Left alone, each saying why.
    let host = with(&|p| p["spec"]["hostNetwork"] = json!(true));
    let out_opt = with(&|p| p["metadata"]["annotations"] = json!({"mesh.dev/inject": "disabled"}));
    for (ns, opted, p, why) in [
        ("default", Namespace::OptedIn, &host, "hostNetwork"),
        ("kube-system", Namespace::OptedIn, &pod(), "kube-system"),
        ("default", Namespace::OptedIn, &out_opt, "opts out"),
        ("default", Namespace::NotOptedIn, &pod(), "neither the pod"),
    ] {
        let (out, patched) = answered(ns, opted, p);
        assert_eq!(out["allowed"], true, "{out}");
        assert!(out["patch"].is_null(), "{why}: {out}");
        assert_eq!(&patched, p);
        assert!(
            out["auditAnnotations"]["skipped"]
                .as_str()
                .unwrap()
                .contains(why),
            "{out}"
        );
    }
    // A bad annotation: refused, naming it.
    let bad = with(&|p| {
        p["metadata"]["annotations"] = json!({"mesh.dev/skip-outbound-cidrs": "10.0.0.0/40"})
    });
    let (out, _) = answered("default", Namespace::OptedIn, &bad);
    assert_eq!(out["allowed"], false, "{out}");
    let msg = out["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "mesh cannot inject this Pod: mesh.dev/skip-outbound-cidrs: \"10.0.0.0/40\""
        ),
        "{msg}"
    );
}

#[test]
fn other_operations_and_kinds_pass_and_garbage_is_an_error() {
    let t = crate::inject::tests::template();
    let body = review("default", "UPDATE", &pod());
    let r = answer(&body, Namespace::OptedIn, &t).unwrap();
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"]["patch"].is_null());
    for bad in [&b""[..], b"{}", b"{\"request\": 7}", b"\xff"] {
        assert!(answer(bad, Namespace::OptedIn, &t).is_err());
    }
}
