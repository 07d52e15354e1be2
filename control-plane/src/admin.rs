//! The Admin gRPC service meshctl talks to: apply, read and shift rules, and
//! report on releases and proxies. Thin: all logic lives in `state`.

use crate::identity::ca::Ca;
use crate::release::{self, Controller};
use crate::rules;
use crate::state::State;
use crate::telemetry::{DEFAULT_WINDOW, MAX_WINDOW, Window};
use mesh_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Admin service implementation.
pub struct Admin {
    state: Arc<State>,
    ca: Arc<Ca>,
    trust_domain: String,
    telemetry: Arc<Window>,
    releases: Arc<Controller>,
}

impl Admin {
    /// An admin service over shared state, the CA and the release controller.
    pub fn new(
        state: Arc<State>,
        ca: Arc<Ca>,
        trust_domain: String,
        telemetry: Arc<Window>,
        releases: Arc<Controller>,
    ) -> Self {
        Admin {
            state,
            ca,
            trust_domain,
            telemetry,
            releases,
        }
    }
}

fn files_of(files: Vec<pb::RuleFile>) -> Vec<(String, String)> {
    files.into_iter().map(|f| (f.filename, f.content)).collect()
}

impl Admin {
    /// The answer to an apply or a delete: what it did, or, refused, every
    /// problem in the body.
    fn answer(
        &self,
        done: Result<crate::state::Applied, crate::state::Error>,
    ) -> Result<pb::ApplyResponse, Status> {
        match done {
            Ok(applied) => Ok(pb::ApplyResponse {
                version: applied.version.to_string(),
                warnings: applied.warnings,
                results: applied
                    .outcomes
                    .iter()
                    .map(|(rule, o)| format!("{rule} {}", o.as_str()))
                    .collect(),
                problems: Vec::new(),
            }),
            Err(e) => {
                let problems = crate::errors::refusal(e)?;
                Ok(pb::ApplyResponse {
                    version: self.state.version().to_string(),
                    problems: problems.iter().map(crate::index::views::problem).collect(),
                    ..Default::default()
                })
            }
        }
    }
}

/// Runs a rule change off the async workers (`State::off_runtime`): a large
/// apply is seconds of CPU.
async fn off_runtime<T: Send + 'static>(
    state: &Arc<State>,
    change: impl FnOnce(&State) -> T + Send + 'static,
) -> Result<T, Status> {
    state
        .off_runtime(change)
        .await
        .map_err(|e| Status::internal(format!("rule change failed: {e}")))
}

fn namespace_or_default(ns: String) -> String {
    if ns.is_empty() {
        crate::manifest::meta::DEFAULT_NAMESPACE.into()
    } else {
        ns
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Admin {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let files = files_of(request.into_inner().files);
        let applied = off_runtime(&self.state, move |s| s.apply(&files)).await?;
        Ok(Response::new(self.answer(applied)?))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let r = request.into_inner();
        let mut targets = Vec::new();
        if !r.kind.is_empty() || !r.name.is_empty() {
            // Kinds as people type them: any case.
            let kind = rules::KINDS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&r.kind))
                .map_or(r.kind.clone(), |k| k.to_string());
            targets.push(rules::Target {
                kind,
                namespace: namespace_or_default(r.namespace),
                name: r.name,
            });
        }
        if targets.is_empty() && r.files.is_empty() {
            return Err(Status::invalid_argument(
                "name rules to delete: documents, or a kind and a name",
            ));
        }
        let files = files_of(r.files);
        let deleted = off_runtime(&self.state, move |s| s.delete(&files, targets)).await?;
        Ok(Response::new(self.answer(deleted)?))
    }

    async fn get_splits(
        &self,
        request: Request<pb::GetSplitsRequest>,
    ) -> Result<Response<pb::GetSplitsResponse>, Status> {
        let ns = request.into_inner().namespace;
        let (version, splits) = self.state.splits(&ns);
        Ok(Response::new(pb::GetSplitsResponse {
            version: version.to_string(),
            splits: splits.iter().map(crate::index::views::split).collect(),
        }))
    }

    async fn get_routes(
        &self,
        request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        Ok(Response::new(self.state.routes(&ns, &r.service)?))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let r = request.into_inner();
        let window = match r.window_ms {
            0 => DEFAULT_WINDOW,
            ms => std::time::Duration::from_millis(ms),
        };
        if window > MAX_WINDOW {
            return Err(Status::invalid_argument(format!(
                "window {}s is longer than the {}s the control plane keeps",
                window.as_secs(),
                MAX_WINDOW.as_secs()
            )));
        }
        let direction = match r.direction.as_str() {
            "" | "inbound" => "inbound",
            "outbound" => "outbound",
            other => {
                return Err(crate::telemetry::Error::Direction(other.into()).into());
            }
        };
        let ns = namespace_or_default(r.namespace);
        let service = (!r.service.is_empty()).then(|| format!("{}.{ns}", r.service));
        let rows = self.telemetry.stats(service.as_deref(), window, direction);
        if rows.is_empty() && !r.service.is_empty() {
            // No traffic is an answer; a service the mesh does not know is
            // a mistake worth naming.
            self.state.routes(&ns, &r.service)?;
        }
        Ok(Response::new(pb::GetStatsResponse {
            window_ms: window.as_millis() as u64,
            direction: direction.into(),
            rows,
        }))
    }

    async fn shift(
        &self,
        request: Request<pb::ShiftRequest>,
    ) -> Result<Response<pb::ShiftResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        let (split, version, warnings) = off_runtime(&self.state, move |s| {
            s.shift(&ns, &r.service, &r.backend, r.percent, None)
        })
        .await??;
        Ok(Response::new(pb::ShiftResponse {
            split: Some(crate::index::views::split(&split)),
            version: version.to_string(),
            warnings,
        }))
    }

    async fn release_status(
        &self,
        request: Request<pb::ReleaseStatusRequest>,
    ) -> Result<Response<pb::ReleaseStatusResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        Ok(Response::new(self.state.status(&ns, &r.service)?))
    }

    async fn start_release(
        &self,
        request: Request<pb::StartReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let spec = match (r.file, r.spec) {
            (Some(f), _) => release::spec::Spec::from_file(&f.filename, &f.content),
            (None, Some(s)) => release::spec::Spec::from_proto(&s),
            (None, None) => {
                return Err(Status::invalid_argument(
                    "a release needs a spec: flags or a Release document",
                ));
            }
        };
        let started = match spec {
            Ok(spec) => self.releases.start(spec).await,
            Err(problems) => Err(release::Error::Invalid(problems)),
        };
        match started {
            Ok(answer) => Ok(Response::new(answer)),
            // Every problem in the body, as Apply answers.
            Err(release::Error::Invalid(problems)) => Ok(Response::new(pb::ReleaseResponse {
                problems: problems.iter().map(crate::index::views::problem).collect(),
                ..Default::default()
            })),
            Err(e) => Err(e.into()),
        }
    }

    async fn control_release(
        &self,
        request: Request<pb::ControlReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let who = crate::mtls::identity_of(&request).unwrap_or_else(|| "an operator".into());
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        Ok(Response::new(
            self.releases
                .command(&ns, &r.service, &r.action, &who)
                .await?,
        ))
    }

    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        Ok(Response::new(self.releases.status(&ns, &r.service)?))
    }

    async fn release_history(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::ReleaseHistoryResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace_or_default(r.namespace);
        Ok(Response::new(self.releases.history(&ns, &r.service)))
    }

    async fn proxy_status(
        &self,
        _: Request<pb::ProxyStatusRequest>,
    ) -> Result<Response<pb::ProxyStatusResponse>, Status> {
        let proxies = self
            .state
            .proxies()
            .list()
            .into_iter()
            .map(|p| pb::ProxyStatus {
                service: p.node.service,
                version: p.node.version,
                namespace: p.node.namespace,
                instance_id: p.node.instance_id,
                acked_version: p.acked.map(|v| v.to_string()).unwrap_or_default(),
                nacked_version: p
                    .nacked
                    .as_ref()
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_default(),
                nack_reason: p.nacked.map(|(_, r)| r).unwrap_or_default(),
                last_push_ms: p.last_push.map(|d| d.as_secs_f64() * 1000.0),
                last_seen_ms_ago: p.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        Ok(Response::new(pb::ProxyStatusResponse {
            control_version: self.state.version().to_string(),
            proxies,
        }))
    }

    async fn identities(
        &self,
        _: Request<pb::IdentitiesRequest>,
    ) -> Result<Response<pb::IdentitiesResponse>, Status> {
        Ok(Response::new(pb::IdentitiesResponse {
            trust_domain: self.trust_domain.clone(),
            root_not_after_unix: self.ca.root_not_after_unix(),
            cert_lifetime_secs: self.ca.lifetime().as_secs() as i64,
            workloads: self.state.identities(),
        }))
    }
}
