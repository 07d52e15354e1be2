//! meshctl against a Kubernetes cluster (`--kubeconfig`, `--context`):
//! the rules are objects of the cluster. `apply` validates the files with
//! the control plane's own code, beside the rule objects already in the
//! cluster, before it writes anything (server-side apply, field manager
//! `meshctl`); the API server's admission webhook then runs the same
//! validation again. Reads build the views a local control plane serves
//! with the same pure code: the registry from the cluster's Services,
//! EndpointSlices and Pods, the rule set from its rule objects.

use crate::cli::{self, Output};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams};
use mesh_control::manifest::{self, Document, Located};
use mesh_control::registry::cluster::Cluster as Registry;
use mesh_control::rules::{self, RuleSet};
use mesh_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The field manager meshctl writes as.
const MANAGER: &str = "meshctl";

/// How long `release shift` waits for the control plane to accept the
/// new generation.
const CONFIRM: Duration = Duration::from_secs(10);

/// A cluster reached through a kubeconfig context.
pub struct Cluster {
    client: kube::Client,
    /// The context's name.
    pub context: String,
    /// The API server's URL.
    pub server: String,
}

impl Cluster {
    /// Connects through `kubeconfig` (default: $KUBECONFIG, then
    /// ~/.kube/config) and `context` (default: its current context).
    pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Cluster> {
        let kc = match kubeconfig {
            Some(p) => kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?,
            None => kube::config::Kubeconfig::read().context("reading the kubeconfig")?,
        };
        let name = context
            .map(String::from)
            .or_else(|| kc.current_context.clone())
            .unwrap_or_default();
        let options = kube::config::KubeConfigOptions {
            context: context.map(String::from),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .with_context(|| format!("kubeconfig context {name:?}"))?;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("the Kubernetes client")?;
        Ok(Cluster {
            client,
            context: name,
            server,
        })
    }

    /// Which cluster this is, for the line every command starts with.
    pub fn describe(&self) -> String {
        format!("cluster context {:?} ({})", self.context, self.server)
    }

    /// The mesh's roots as the injection webhook configuration carries
    /// them (mesh-control keeps its caBundle equal to them), for
    /// `meshctl inject`.
    pub async fn injection_roots(&self) -> Result<String> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        let mwc = kube::Api::<MutatingWebhookConfiguration>::all(self.client())
            .get_opt("mesh-inject")
            .await
            .context("reading MutatingWebhookConfiguration mesh-inject")?
            .context("MutatingWebhookConfiguration mesh-inject is missing: install mesh, or give --roots")?;
        let bundle = mwc
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .find_map(|w| w.client_config.ca_bundle)
            .context("the injection webhook has no caBundle yet (is mesh-control running?); give --roots")?;
        String::from_utf8(bundle.0).context("the injection webhook's caBundle is not PEM")
    }

    /// The API client.
    pub(crate) fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The rule kinds' API resources.
    pub(crate) fn kinds() -> impl Iterator<Item = ApiResource> {
        mesh_control::kubernetes::rules::KINDS
            .iter()
            .map(|(g, v, k, plural)| {
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
            })
    }

    pub(crate) fn api(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
    ) -> kube::Api<DynamicObject> {
        match namespace {
            Some(ns) => kube::Api::namespaced_with(self.client.clone(), ns, ar),
            None => kube::Api::all_with(self.client.clone(), ar),
        }
    }

    /// The rule objects of the cluster as documents (those that do not
    /// validate alone are left out, as the control plane leaves them out).
    async fn documents(&self) -> Result<Vec<Located>> {
        let mut docs = Vec::new();
        for ar in Self::kinds() {
            let list = self
                .api(&ar, None)
                .list(&ListParams::default())
                .await
                .map_err(|e| not_installed(e, &ar))?;
            for obj in list {
                if let (_, Ok(mine)) = mesh_control::kubernetes::rules::document(&ar, &obj) {
                    docs.extend(mine);
                }
            }
        }
        // HTTPRoutes too, where the cluster serves them, and only mesh's
        // (a Service parent): Gateway API is the cluster owner's to install.
        let ar = mesh_control::kubernetes::gateway::resource();
        match self.api(&ar, None).list(&ListParams::default()).await {
            Ok(list) => {
                for obj in list
                    .iter()
                    .filter(|o| mesh_control::kubernetes::rules::ours(&ar, o))
                {
                    if let (_, Ok(mine)) = mesh_control::kubernetes::rules::document(&ar, obj) {
                        docs.extend(mine);
                    }
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(anyhow::Error::new(e).context("listing HTTPRoutes")),
        }
        Ok(docs)
    }

    /// The rule set the control plane builds from the cluster's objects.
    async fn rule_set(&self) -> Result<RuleSet> {
        let docs = self.documents().await?;
        let built = rules::rules_from(&docs).and_then(|i| RuleSet::default().apply(&i, &docs));
        match built {
            Ok((set, _)) => Ok(set),
            Err(problems) => bail!(
                "the cluster's rule objects do not validate together:\n{}",
                render(&problems)
            ),
        }
    }

    /// The registry the control plane builds from the cluster.
    async fn registry(&self) -> Result<Registry> {
        let lp = ListParams::default();
        let services = kube::Api::<Service>::all(self.client.clone())
            .list(&lp)
            .await?;
        let slices = kube::Api::<EndpointSlice>::all(self.client.clone())
            .list(&lp)
            .await?;
        let pods = kube::Api::<Pod>::all(self.client.clone()).list(&lp).await?;
        let (registry, _) = mesh_control::registry::cluster::convert(
            &services.items,
            &slices.items,
            &pods.items,
            "cluster.local",
        );
        Ok(registry)
    }
}

/// A list refused because the kind is not served: mesh is not installed.
fn not_installed(e: kube::Error, ar: &ApiResource) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "the cluster does not serve {} ({}): install mesh's CRDs first",
            ar.kind,
            ar.api_version
        ),
        _ => anyhow::Error::new(e).context(format!("listing {}", ar.kind)),
    }
}

/// The API resource of a rule document, or why it has none in a cluster.
fn resource_of(doc: &Document) -> Result<ApiResource, String> {
    let (kind, _) = doc.kind_and_meta();
    Cluster::kinds().find(|ar| ar.kind == kind).ok_or_else(|| match kind {
        "Service" | "Workload" => format!(
            "{kind} documents are local mode's; in a cluster the Services, Pods and EndpointSlices are the cluster's own"
        ),
        _ => format!("{kind} is not read from a cluster yet; apply it to a local mesh"),
    })
}

/// `meshctl apply -f ...` against the cluster.
pub async fn apply(cluster: &Cluster, paths: &[PathBuf]) -> Result<()> {
    let files = cli::read_rule_files(paths)?;
    let mut mine: Vec<(Located, serde_json::Value)> = Vec::new();
    let mut problems: Vec<manifest::Error> = Vec::new();
    for f in &files {
        let raw: Vec<(usize, String)> = manifest::split_documents(&f.content);
        match manifest::parse(&f.filename, &f.content) {
            Ok(docs) => {
                for d in docs {
                    if let Err(why) = resource_of(&d.doc) {
                        let (kind, meta) = d.doc.kind_and_meta();
                        let object = format!("{kind} {}/{}", meta.namespace, meta.name);
                        problems.push(manifest::Error::about(
                            Some(&d),
                            &object,
                            "kind".into(),
                            why,
                        ));
                        continue;
                    }
                    let text = raw
                        .iter()
                        .find(|(line, _)| *line == d.line)
                        .map(|(_, t)| t.as_str());
                    let value = text
                        .and_then(|t| serde_saphyr::from_str::<serde_json::Value>(t).ok())
                        .context("re-reading a document that parsed")?;
                    mine.push((d, value));
                }
            }
            Err(errs) => problems.extend(errs),
        }
    }
    // Beside what the cluster holds (each object's own earlier version
    // left out), as the control plane will judge it.
    if problems.is_empty() {
        let same = |a: &Located, b: &Located| {
            let ((ka, ma), (kb, mb)) = (a.doc.kind_and_meta(), b.doc.kind_and_meta());
            ka == kb && ma.namespace == mb.namespace && ma.name == mb.name
        };
        let docs: Vec<Located> = mine.iter().map(|(d, _)| d.clone()).collect();
        let others: Vec<Located> = cluster
            .documents()
            .await?
            .into_iter()
            .filter(|o| !docs.iter().any(|d| same(d, o)))
            .collect();
        problems.extend(rules::beside(&docs, &others));
    }
    if !problems.is_empty() {
        eprint!("{}", render(&problems));
        bail!(
            "rules rejected; nothing was applied to {} ({} problem{})",
            cluster.describe(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
    }
    let mut done = Vec::new();
    for (d, mut value) in mine {
        let ar = resource_of(&d.doc).map_err(anyhow::Error::msg)?;
        let (kind, meta) = d.doc.kind_and_meta();
        value["metadata"]["namespace"] = serde_json::json!(meta.namespace);
        let what = format!("{kind} {}/{}", meta.namespace, meta.name);
        let written = cluster
            .api(&ar, Some(&meta.namespace))
            .patch(
                &meta.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await;
        match written {
            Ok(_) => {
                println!("{} applied", what.to_lowercase());
                done.push(what);
            }
            Err(e) => {
                let already = if done.is_empty() {
                    "nothing was applied".to_string()
                } else {
                    format!("already applied: {}", done.join(", "))
                };
                return Err(
                    api_error(e).context(format!("{what} refused by the cluster; {already}"))
                );
            }
        }
    }
    Ok(())
}

/// Problems found here, printed as a local control plane's are.
pub(crate) fn render(problems: &[manifest::Error]) -> String {
    let pb: Vec<pb::Problem> = problems
        .iter()
        .map(mesh_control::index::views::problem)
        .collect();
    cli::render_problems(&pb)
}

/// The API server's own message, which names the webhook's reason.
fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
        other => anyhow::Error::new(other),
    }
}

/// `meshctl delete` against the cluster: the objects the files name, or
/// one by kind and name.
pub async fn delete(
    cluster: &Cluster,
    paths: &[PathBuf],
    kind: Option<String>,
    name: Option<String>,
    namespace: &str,
) -> Result<()> {
    let mut targets: Vec<(ApiResource, String, String)> = Vec::new();
    if paths.is_empty() {
        let (kind, name) = (kind.unwrap_or_default(), name.unwrap_or_default());
        let ar = Cluster::kinds()
            .find(|ar| ar.kind.eq_ignore_ascii_case(&kind))
            .with_context(|| format!("{kind:?} is not a rule kind of the cluster"))?;
        targets.push((ar, namespace.to_string(), name));
    } else {
        for f in cli::read_rule_files(paths)? {
            let docs = manifest::parse(&f.filename, &f.content)
                .map_err(|errs| anyhow::anyhow!("{}", render(&errs)))?;
            for d in docs {
                let ar = resource_of(&d.doc).map_err(anyhow::Error::msg)?;
                let (_, meta) = d.doc.kind_and_meta();
                targets.push((ar, meta.namespace.clone(), meta.name.clone()));
            }
        }
    }
    for (ar, ns, name) in targets {
        cluster
            .api(&ar, Some(&ns))
            .delete(&name, &DeleteParams::default())
            .await
            .map_err(api_error)
            .with_context(|| format!("deleting {} {ns}/{name}", ar.kind))?;
        println!("{} {ns}/{name} deleted", ar.kind.to_lowercase());
    }
    Ok(())
}

/// `meshctl get splits` against the cluster.
pub async fn get_splits(cluster: &Cluster, namespace: &str, output: Output) -> Result<()> {
    let set = cluster.rule_set().await?;
    let splits = set
        .splits
        .values()
        .filter(|s| namespace.is_empty() || s.namespace == namespace)
        .map(mesh_control::index::views::split)
        .collect();
    cli::print_splits(
        &pb::GetSplitsResponse {
            version: String::new(),
            splits,
        },
        output,
    )
}

/// `meshctl release status` against the cluster.
pub async fn status(
    cluster: &Cluster,
    namespace: &str,
    service: &str,
) -> Result<pb::ReleaseStatusResponse> {
    let (set, registry) = (cluster.rule_set().await?, cluster.registry().await?);
    Ok(mesh_control::index::status(
        &registry, &set, namespace, service,
    )?)
}

/// `meshctl release shift` against the cluster: the weights of what
/// routes the service (its TrafficSplit, or its HTTPRoute's catch-all
/// rule) patched, only if nobody changed it meanwhile (else redone from
/// the new version), then the control plane's acceptance of the new
/// generation awaited.
pub async fn shift(
    cluster: &Cluster,
    namespace: &str,
    service: &str,
    backend: &str,
    percent: u32,
) -> Result<Vec<(String, u32)>> {
    use mesh_control::kubernetes::weights::{self, Router};
    let set = cluster.rule_set().await?;
    // The same checks as the control plane's, on the rules as listed.
    let (_, _, what) = set.shift(namespace, service, backend, percent, None)?;
    let router = Router::of(&set, namespace, service)
        .with_context(|| format!("nothing routes {namespace}/{service}"))?;
    let (split, stored) =
        weights::shift(&cluster.client, namespace, &router, backend, percent, None)
            .await
            .with_context(|| format!("{what}: nothing was shifted"))?;
    let ar = match &router {
        Router::Split(_) => Cluster::kinds()
            .find(|ar| ar.kind == "TrafficSplit")
            .expect("a rule kind"),
        Router::Route(_) => mesh_control::kubernetes::gateway::resource(),
    };
    let api = cluster.api(&ar, Some(namespace));
    confirm(&api, &ar, &split.name, stored.metadata.generation, &what).await?;
    Ok(split
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.weight))
        .collect())
}

/// Waits for the leader's Accepted condition on `generation`.
async fn confirm(
    api: &kube::Api<DynamicObject>,
    ar: &ApiResource,
    name: &str,
    generation: Option<i64>,
    what: &str,
) -> Result<()> {
    let end = Instant::now() + CONFIRM;
    while Instant::now() < end {
        let obj = api.get(name).await.map_err(api_error)?;
        // A rule object's own conditions, or those of mesh's entry in an
        // HTTPRoute's status.parents.
        let accepted = mesh_control::kubernetes::status::current(ar, &obj)
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.observed_generation == generation);
        if let Some(c) = accepted {
            if c.status == "True" {
                eprintln!(
                    "{what} generation {} accepted by the control plane",
                    generation.unwrap_or(0)
                );
                return Ok(());
            }
            bail!(
                "{what}: the control plane refused generation {}: {}",
                generation.unwrap_or(0),
                c.message
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "warning: {what} generation {} is stored, but no control plane confirmed it within {CONFIRM:?}: is mesh-control running?",
        generation.unwrap_or(0)
    );
    Ok(())
}
