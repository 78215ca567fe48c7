//! Trace context formats on the wire, chosen by `OTEL_PROPAGATORS`.
//!
//! W3C `traceparent` and `baggage` come from the OpenTelemetry SDK. Zipkin's B3
//! (single `b3` header, or `X-B3-*` headers) is small enough to carry here rather
//! than pull in the Zipkin exporter crate that ships one.

use opentelemetry::propagation::{
    text_map_propagator::FieldIter, Extractor, Injector, TextMapCompositePropagator,
    TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::otel_env::PropagatorKind;

/// The propagator `OTEL_PROPAGATORS` asks for: injects every listed format,
/// extracts them in order (a later one wins when several are present, as the
/// specification's composite propagator does).
pub fn propagator(kinds: &[PropagatorKind]) -> TextMapCompositePropagator {
    let list = kinds
        .iter()
        .map(|kind| -> Box<dyn TextMapPropagator + Send + Sync> {
            match kind {
                PropagatorKind::TraceContext => Box::new(TraceContextPropagator::new()),
                PropagatorKind::Baggage => Box::new(BaggagePropagator::new()),
                PropagatorKind::B3 => Box::new(B3Propagator::single()),
                PropagatorKind::B3Multi => Box::new(B3Propagator::multi()),
            }
        })
        .collect();
    TextMapCompositePropagator::new(list)
}

/// Makes [`propagator`]`(kinds)` the process's propagator (what
/// [`init`](super::init) does from `OTEL_PROPAGATORS`).
///
/// With W3C trace context (and baggage) alone, the default, the mesh's layers
/// read and write `traceparent` directly in the common case and leave only
/// `tracestate`, baggage and unusual values to the propagators: set the
/// propagators through this function (or `OTEL_PROPAGATORS`), not straight
/// through `opentelemetry::global`, so the layers know which are in force.
pub fn install(kinds: &[PropagatorKind]) {
    opentelemetry::global::set_text_map_propagator(propagator(kinds));
    super::w3c::set_enabled(
        kinds.contains(&PropagatorKind::TraceContext)
            && kinds
                .iter()
                .all(|k| matches!(k, PropagatorKind::TraceContext | PropagatorKind::Baggage)),
    );
}

/// Zipkin B3 propagation, single-header (`b3: {trace}-{span}-{sampled}`) or
/// multi-header (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`). Extraction
/// accepts both forms either way.
#[derive(Debug)]
pub struct B3Propagator {
    single: bool,
    fields: Vec<String>,
}

const B3: &str = "b3";
const X_B3_TRACE_ID: &str = "x-b3-traceid";
const X_B3_SPAN_ID: &str = "x-b3-spanid";
const X_B3_SAMPLED: &str = "x-b3-sampled";

impl B3Propagator {
    /// Injects the one `b3` header.
    pub fn single() -> Self {
        B3Propagator {
            single: true,
            fields: vec![B3.into()],
        }
    }

    /// Injects the `X-B3-*` headers.
    pub fn multi() -> Self {
        B3Propagator {
            single: false,
            fields: vec![
                X_B3_TRACE_ID.into(),
                X_B3_SPAN_ID.into(),
                X_B3_SAMPLED.into(),
            ],
        }
    }

    fn extract_span_context(&self, extractor: &dyn Extractor) -> Option<SpanContext> {
        let (trace, span, sampled) = match extractor.get(B3) {
            Some(single) => {
                let mut parts = single.trim().split('-');
                let trace = parts.next()?;
                let span = parts.next()?;
                (
                    trace.to_string(),
                    span.to_string(),
                    parts.next().map(str::to_string),
                )
            }
            None => (
                extractor.get(X_B3_TRACE_ID)?.trim().to_string(),
                extractor.get(X_B3_SPAN_ID)?.trim().to_string(),
                extractor.get(X_B3_SAMPLED).map(|s| s.trim().to_string()),
            ),
        };
        // 64-bit trace IDs are left-padded to 128 bits.
        let trace = match trace.len() {
            16 => format!("{trace:0>32}"),
            32 => trace,
            _ => return None,
        };
        let trace_id = TraceId::from_hex(&trace).ok()?;
        let span_id = SpanId::from_hex(&span).ok()?;
        let flags = match sampled.as_deref() {
            Some("1" | "d" | "true") => TraceFlags::SAMPLED,
            _ => TraceFlags::default(),
        };
        let cx = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        cx.is_valid().then_some(cx)
    }
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        if self.single {
            injector.set(B3, format!("{}-{}-{sampled}", sc.trace_id(), sc.span_id()));
        } else {
            injector.set(X_B3_TRACE_ID, sc.trace_id().to_string());
            injector.set(X_B3_SPAN_ID, sc.span_id().to_string());
            injector.set(X_B3_SAMPLED, sampled.to_string());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match self.extract_span_context(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn b3_single_header_round_trips_trace_and_span_ids() {
        let mut headers = HashMap::new();
        headers.insert(
            "b3".to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".to_string(),
        );
        let cx = B3Propagator::single().extract(&headers);
        let span = cx.span();
        let sc = span.span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(sc.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled());

        let mut out = HashMap::new();
        B3Propagator::multi().inject_context(&cx, &mut out);
        assert_eq!(out["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(out["x-b3-spanid"], "e457b5a2e4d86bd1");
        assert_eq!(out["x-b3-sampled"], "1");
    }

    #[test]
    fn b3_garbage_leaves_the_context_empty() {
        let mut headers = HashMap::new();
        headers.insert("b3".to_string(), "not-a-trace".to_string());
        let cx = B3Propagator::single().extract(&headers);
        assert!(!cx.span().span_context().is_valid());
    }
}
