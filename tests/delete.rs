//! `meshctl delete`: rules leave through the same validation they came in
//! by. Deleting the TrafficSplit of a service returns it to its default
//! route (every instance of the root service); a delete that would leave
//! the rules broken, or names a rule that is not there, is refused naming
//! why, and nothing changes. `get splits -o json` carries the version its
//! answer comes from.

mod support;

use meshctl::traffic::burst;
use support::Mesh;

const GROUP: &str = "apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: canary-header
spec:
  matches:
  - name: canary
    headers:
      x-canary: \"true\"
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo-canary
spec:
  service: echo
  matches:
  - kind: HTTPRouteGroup
    name: canary-header
  backends:
  - service: echo-v2
    weight: 100
";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_rules_validates_what_remains_and_returns_services_to_their_default_route() {
    // All of echo's traffic on v2, by the split.
    let (mut mesh, _insts, client) = Mesh::two_versions("delete", "0", "100").await;
    let t = burst(client.outbound, "echo", 200, 4).await;
    assert_eq!((t.count("v2"), t.failures), (200, 0), "{t:?}");

    let out = mesh.meshctl(&["get", "splits", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], mesh.version().await.to_string(), "{json}");
    assert_eq!(json["items"].as_array().unwrap().len(), 1);

    // Refused, nothing changed: a rule that is not there, a kind that is
    // not a rule kind, and a group a split still matches on.
    let before = mesh.version().await;
    let out = mesh.meshctl(&["delete", "trafficsplit", "ghost"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no TrafficSplit default/ghost is in force")
            && stderr(&out).contains("nothing was deleted"),
        "{}",
        stderr(&out)
    );
    let out = mesh.meshctl(&["delete", "Pod", "echo"]).await;
    assert!(
        stderr(&out).contains("\"Pod\" is not a rule kind"),
        "{}",
        stderr(&out)
    );
    mesh.apply_ok("canary.yaml", GROUP).await;
    let with_canary = mesh.version().await;
    let group_only = dir_file(&mesh, "group.yaml", GROUP.split("---").next().unwrap());
    let out = mesh.meshctl(&["delete", "-f", &group_only]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("group.yaml:1: HTTPRouteGroup default/canary-header")
            && stderr(&out).contains("still matched by TrafficSplit default/echo-canary"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        mesh.version().await,
        with_canary,
        "a refused delete changed nothing"
    );
    assert!(before < with_canary);

    // Both canary rules at once (the file that made them): accepted.
    let canary = dir_file(&mesh, "canary-again.yaml", GROUP);
    let out = mesh.meshctl(&["delete", "-f", &canary]).await;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        printed.contains("httproutegroup default/canary-header deleted")
            && printed.contains("trafficsplit default/echo-canary deleted"),
        "{printed}"
    );

    // Deleting the split returns echo to its default route: both versions
    // (round robin, so an unmeasured v1 is not passed over by P2C).
    mesh.no_retries("echo", "round-robin", &client).await;
    let out = mesh
        .meshctl(&["delete", "TrafficSplit", "echo-split"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    mesh.sync(&client).await;
    let t = burst(client.outbound, "echo", 400, 4).await;
    assert_eq!(t.failures, 0, "{t:?}");
    assert_eq!(
        (t.count("v1"), t.count("v2")),
        (200, 200),
        "the default route takes every instance of echo: {t:?}"
    );
    let out = mesh.meshctl(&["get", "splits", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["items"].as_array().unwrap().is_empty(), "{json}");
    // Gone for good: a restarted control plane does not bring it back.
    mesh.kill_control().await;
    mesh.restart_control().await;
    let out = mesh.meshctl(&["get", "splits", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["items"].as_array().unwrap().is_empty(), "{json}");
}

/// Writes `yaml` into the mesh's directory; returns the path.
fn dir_file(mesh: &Mesh, name: &str, yaml: &str) -> String {
    let path = mesh.dir.0.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}
