//! Distributed tracing: joins the trace a request carries (W3C
//! `traceparent`/`tracestate`, or B3 single or multi header), records a
//! server span inbound and a client span outbound with the OpenTelemetry
//! HTTP semantic-convention attributes, re-injects its own span so the next
//! hop becomes its child, and exports over OTLP/gRPC. Without a collector
//! configured none of this exists: headers pass through untouched and no
//! request pays for a span.

use crate::config;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use std::time::Duration;

pub mod b3;

/// Exporting failed to start.
#[derive(Debug, thiserror::Error)]
#[error("trace exporter for {collector}: {reason}")]
pub struct Error {
    collector: String,
    reason: String,
}

/// The tracer and the propagators.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    w3c: TraceContextPropagator,
}

/// A span in progress.
pub struct Span {
    span: opentelemetry_sdk::trace::Span,
    trace_id: String,
    client: bool,
}

impl Tracing {
    /// Builds the exporter (it connects lazily, so a collector that is down
    /// costs nothing but dropped spans) and the tracer.
    pub fn start(cfg: &config::Trace, node: &crate::config::Identity) -> Result<Tracing, Error> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.collector.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error {
                collector: cfg.collector.clone(),
                reason: e.to_string(),
            })?;
        // Exports at least once a second so traces show up while a person
        // is still looking; the queue bounds memory when the collector lags.
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(1))
                    .with_max_queue_size(4096)
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(node.service.clone())
            .with_attributes([
                KeyValue::new("service.version", node.version.clone()),
                KeyValue::new("service.namespace", node.namespace.clone()),
                KeyValue::new("service.instance.id", node.instance_id.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            // An incoming sampled flag decides; only new traces use the ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mesh-proxy");
        Ok(Tracing {
            provider,
            tracer,
            w3c: TraceContextPropagator::new(),
        })
    }

    /// Starts a span of `kind` named `name` for the request with these
    /// headers, joining the trace they carry, and rewrites them so the next
    /// hop is its child: W3C always, and B3 in whichever encodings the
    /// request arrived with. Attributes come after, and only if the span is
    /// sampled (`Span::add`): most requests are not, and pay for none.
    pub fn start_span(&self, kind: SpanKind, name: String, headers: &mut HeaderMap) -> Span {
        // W3C wins when a request carries both.
        let w3c = self.w3c.extract(&HeaderExtractor(headers));
        let parent = if w3c.span().span_context().is_valid() {
            w3c
        } else {
            b3::extract(headers).map_or_else(Context::new, |sc| {
                Context::new().with_remote_span_context(sc)
            })
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind.clone())
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context().clone();
        let cx = Context::new().with_remote_span_context(sc.clone());
        let b3 = b3::present(headers);
        self.w3c.inject_context(&cx, &mut HeaderInjector(headers));
        b3::inject(&sc, headers, b3);
        Span {
            trace_id: sc.trace_id().to_string(),
            client: kind == SpanKind::Client,
            span,
        }
    }

    /// Flushes what is queued (on shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "trace exporter shutdown");
        }
    }
}

impl Span {
    /// The trace id, for access logs.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// Whether it will be exported (sampled).
    pub fn recording(&self) -> bool {
        self.span.is_recording()
    }

    /// Adds attributes (of a sampled span; build them only then).
    pub fn add(&mut self, attributes: Vec<KeyValue>) {
        self.span.set_attributes(attributes);
    }

    /// Ends the span with the response status. Server spans are errors on
    /// 5xx only; client spans on 4xx too (the semantic conventions' rule);
    /// both on a gRPC status other than OK.
    pub fn finish(mut self, status: u16, grpc: Option<i32>, attributes: Vec<KeyValue>) {
        if !self.span.is_recording() {
            return;
        }
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        for kv in attributes {
            self.span.set_attribute(kv);
        }
        let error = match grpc {
            Some(code) if code != 0 => Some(code.to_string()),
            _ if status >= 500 || (self.client && status >= 400) => Some(status.to_string()),
            _ => None,
        };
        if let Some(e) = error {
            self.span.set_attribute(KeyValue::new("error.type", e));
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}
