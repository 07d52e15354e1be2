//! B3 propagation (Zipkin's headers), single (`b3`) and multi header
//! (`X-B3-*`), as the openzipkin/b3-propagation spec defines them. Our own
//! because the Rust OpenTelemetry B3 propagator ships only inside the
//! deprecated Zipkin exporter crate.

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

const SINGLE: &str = "b3";
const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
const PARENT: &str = "x-b3-parentspanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";

/// Which encodings a request carried, so the answer goes out in the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encodings {
    /// `b3` header.
    pub single: bool,
    /// `X-B3-*` headers.
    pub multi: bool,
}

/// The encodings present in `headers`.
pub fn present(headers: &HeaderMap) -> Encodings {
    Encodings {
        single: headers.contains_key(SINGLE),
        multi: headers.contains_key(TRACE_ID),
    }
}

fn trace_id(s: &str) -> Option<TraceId> {
    // 64-bit ids are left-padded to 128 bits.
    if !(s.len() == 16 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = TraceId::from_hex(s).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = SpanId::from_hex(s).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn context(trace: TraceId, span: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace, span, flags, true, TraceState::default())
}

/// The remote parent the headers name; the single header wins over multi.
/// A missing sampling state counts as not sampled (the OpenTelemetry rule).
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get(SINGLE) {
        let mut parts = v.split('-');
        if let (Some(t), Some(s)) = (parts.next(), parts.next()) {
            let sampled = matches!(parts.next(), Some("1" | "d"));
            return Some(context(trace_id(t)?, span_id(s)?, sampled));
        }
        return None; // a lone sampling decision carries no parent
    }
    let (t, s) = (trace_id(get(TRACE_ID)?)?, span_id(get(SPAN_ID)?)?);
    let sampled = matches!(get(SAMPLED), Some("1" | "true")) || get(FLAGS) == Some("1");
    Some(context(t, s, sampled))
}

/// Writes `sc` in the chosen encodings, replacing what was there.
pub fn inject(sc: &SpanContext, headers: &mut HeaderMap, enc: Encodings) {
    let (t, s) = (sc.trace_id().to_string(), sc.span_id().to_string());
    let sampled = if sc.is_sampled() { "1" } else { "0" };
    let value = |v: String| HeaderValue::from_str(&v).expect("hex and dashes");
    if enc.single {
        headers.insert(SINGLE, value(format!("{t}-{s}-{sampled}")));
    }
    if enc.multi {
        headers.remove(PARENT);
        headers.remove(FLAGS);
        headers.insert(TRACE_ID, value(t));
        headers.insert(SPAN_ID, value(s));
        headers.insert(SAMPLED, HeaderValue::from_static(sampled));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const T: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const S: &str = "e457b5a2e4d86bd1";

    #[test]
    fn single_header_with_and_without_sampling() {
        let sc = extract(&headers(&[(
            SINGLE,
            &format!("{T}-{S}-1-05e3ac9a4f6e3b90"),
        )]))
        .unwrap();
        assert_eq!(sc.trace_id().to_string(), T);
        assert_eq!(sc.span_id().to_string(), S);
        assert!(sc.is_sampled() && sc.is_remote());
        let sc = extract(&headers(&[(SINGLE, &format!("{T}-{S}"))])).unwrap();
        assert!(!sc.is_sampled());
        assert!(extract(&headers(&[(SINGLE, "0")])).is_none());
        assert!(extract(&headers(&[(SINGLE, "zz-yy-1")])).is_none());
    }

    #[test]
    fn multi_header_pads_64_bit_trace_ids_and_reads_debug_flags() {
        let sc = extract(&headers(&[
            (TRACE_ID, "64fe8b2a57d3eff7"),
            (SPAN_ID, S),
            (FLAGS, "1"),
        ]))
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(sc.is_sampled());
        assert!(extract(&headers(&[(TRACE_ID, T)])).is_none());
    }

    #[test]
    fn inject_round_trips_in_each_encoding() {
        let sc = context(trace_id(T).unwrap(), span_id(S).unwrap(), true);
        for enc in [
            Encodings {
                single: true,
                multi: false,
            },
            Encodings {
                single: false,
                multi: true,
            },
        ] {
            let mut h = headers(&[(PARENT, "05e3ac9a4f6e3b90")]);
            inject(&sc, &mut h, enc);
            assert_eq!(present(&h), enc);
            assert_eq!(extract(&h).unwrap(), sc);
            assert_eq!(h.contains_key(PARENT), !enc.multi);
        }
    }
}
