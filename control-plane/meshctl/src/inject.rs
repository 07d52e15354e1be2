//! `meshctl inject` and `meshctl uninject`: every pod of a manifest
//! stream (Pods, the pod templates of Deployments, StatefulSets,
//! DaemonSets, Jobs and CronJobs, and those of List items) changed by the
//! very code the injection webhook runs (`mesh_control::inject`), every
//! other document printed as it came.

use anyhow::{Context, Result, bail};
use mesh_control::inject::{Template, workloads};
use serde_json::Value;

/// The documents of a YAML stream, each as JSON.
fn documents(text: &str, file: &str) -> Result<Vec<Value>> {
    let docs = mesh_control::manifest::split_documents(text);
    if docs.is_empty() {
        bail!("{file}: no documents (the file is empty, or holds only comments and `---`)");
    }
    docs.iter()
        .map(|(line, doc)| {
            serde_saphyr::from_str::<Value>(doc)
                .with_context(|| format!("{file}:{line}: not a YAML document"))
        })
        .collect()
}

/// The documents as one YAML stream.
fn print(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(doc).context("writing YAML")?);
    }
    Ok(out)
}

/// `text` (a YAML stream read from `file`) with every pod injected, and a
/// line for each pod saying what became of it. Nothing is printed when
/// any pod is refused: every problem is named instead.
pub fn inject(text: &str, file: &str, template: &Template) -> Result<(String, Vec<String>)> {
    let mut docs = documents(text, file)?;
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for doc in &mut docs {
        match workloads::inject(doc, template) {
            Ok(reports) => lines.extend(reports.into_iter().map(|r| match r.skipped {
                None => format!("{}: injected", r.object),
                Some(why) => format!("{}: left as it is: {why}", r.object),
            })),
            Err(refused) => problems.extend(refused.0),
        }
    }
    if !problems.is_empty() {
        bail!("{file}: nothing injected:\n  {}", problems.join("\n  "));
    }
    Ok((print(&docs)?, lines))
}

/// `text` with injection removed from every pod, and how many pods it was
/// removed from.
pub fn uninject(text: &str, file: &str) -> Result<(String, usize)> {
    let mut docs = documents(text, file)?;
    let mut count = 0;
    for doc in &mut docs {
        count += workloads::uninject(doc).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    }
    Ok((print(&docs)?, count))
}

/// Reads `-f`: a path, or `-` for standard input.
pub fn read(file: &std::path::Path) -> Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            image: "mesh/mesh-proxy:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            control_addr: "https://mesh-control.mesh-system.svc:15010".into(),
            roots_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            trust_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn a_refused_pod_names_its_document_and_nothing_is_printed() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    mesh.dev/skip-outbound-ports: x\nspec:\n  containers: [{name: a, image: a}]\n";
        let e = inject(text, "p.yaml", &template()).unwrap_err().to_string();
        assert!(
            e.contains("Pod default/p: mesh.dev/skip-outbound-ports: \"x\""),
            "{e}"
        );
        assert!(inject("# nothing\n---\n", "e.yaml", &template()).is_err());
        assert!(inject("a: [\n", "bad.yaml", &template()).is_err());
    }
}
