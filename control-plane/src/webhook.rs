//! The admission webhooks' HTTPS listener (`--webhook-addr`): `POST
//! /validate` takes an AdmissionReview v1 of a rule object and answers it
//! with `kubernetes::admission` against the rule objects in force; `POST
//! /inject` (a Pod of an opted-in namespace) and `/inject/pod` (a Pod that
//! opts in itself) answer with `kubernetes::injection`'s patch. Its
//! certificate names the webhook's Service (`--webhook-names`) and comes
//! from the mesh CA, whose roots `kubernetes::ca_bundle` keeps in both
//! webhook configurations.

use crate::inject::{Namespace, Template};
use crate::manifest::Located;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The path the ValidatingWebhookConfiguration names.
pub const PATH: &str = "/validate";
/// The MutatingWebhookConfiguration's path for Pods of opted-in namespaces.
pub const INJECT_PATH: &str = "/inject";
/// Its path for Pods that opt in themselves.
pub const INJECT_POD_PATH: &str = "/inject/pod";

/// The largest AdmissionReview read: an object and its old version, each
/// at most the API server's 3 MiB request limit.
const MAX_REVIEW_BYTES: usize = 7 << 20;

/// The rule objects in force, as `rules::start` publishes them.
pub type InForce = watch::Receiver<Option<Arc<Vec<Located>>>>;

/// Serves reviews on `listener` until the process exits.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<crate::mtls::ServerTls>,
    limit: crate::listen::Limit,
    idle: Duration,
    in_force: InForce,
    template: Arc<Template>,
) {
    let mut conns = std::pin::pin!(crate::mtls::incoming(listener, tls, limit, idle));
    while let Some(conn) = conns.next().await {
        let Ok(conn) = conn else { continue };
        let in_force = in_force.clone();
        let template = template.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let in_force = in_force.clone();
                let template = template.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(respond(req, &in_force, &template).await)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(idle);
            let _ = builder.serve_connection(TokioIo::new(conn), svc).await;
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    in_force: &InForce,
    template: &Template,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content: &'static str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content)
            .body(Full::new(Bytes::from(body)))
            .expect("a response of our own")
    };
    let text = |status, s: String| reply(status, "text/plain; charset=utf-8", s.into_bytes());
    let opted = match req.uri().path() {
        PATH => None,
        INJECT_PATH => Some(Namespace::OptedIn),
        INJECT_POD_PATH => Some(Namespace::NotOptedIn),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("only {PATH}, {INJECT_PATH} and {INJECT_POD_PATH} are served here\n"),
            );
        }
    };
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "an AdmissionReview is POSTed\n".into(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let (status, why) = crate::errors::webhook_body(&*e);
            return text(status, format!("{why}\n"));
        }
    };
    let answered = match opted {
        None => {
            let docs = in_force.borrow().clone().unwrap_or_default();
            crate::kubernetes::admission::answer(&body, &docs)
                .map(|r| serde_json::to_vec(&r).expect("a review serializes"))
        }
        Some(opted) => crate::kubernetes::injection::answer(&body, opted, template)
            .map(|r| serde_json::to_vec(&r).expect("a review serializes")),
    };
    match answered {
        Ok(review) => reply(StatusCode::OK, "application/json", review),
        Err(e) => text(crate::errors::admission_status(&e), format!("{e}\n")),
    }
}
