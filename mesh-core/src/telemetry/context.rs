//! Trace context in and out of HTTP headers, and the bounded attribute values
//! both directions share.

use std::sync::atomic::{AtomicU8, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::w3c;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the trace context of the call being made into `headers` with the
/// propagators `OTEL_PROPAGATORS` chose: `span`'s context when the mesh made a
/// span for this call, otherwise the current OpenTelemetry context (the
/// inbound request's, attached by the server layer, or the app's own span's).
/// Writes nothing, and costs no propagator call, when there is no trace and no
/// baggage to carry.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_none() {
        // Borrowed, not cloned: this runs for every outbound attempt.
        Context::map_current(|cx| inject_context(cx, headers));
    } else {
        inject_context(&span.context(), headers);
    }
}

fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::TraceContextExt;
    if w3c::enabled() && w3c::inject(cx, headers) {
        return;
    }
    if !cx.span().span_context().is_valid() && cx.baggage().is_empty() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers))
    });
}

/// Reads a caller's trace context (and baggage) from `headers`.
pub fn extract(headers: &HeaderMap) -> Context {
    if w3c::enabled() {
        if let Some(cx) = w3c::extract(headers) {
            return cx;
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// [`extract`], skipped (an empty context) when `headers` has none of the
/// fields the supported propagators read: most requests inside a service
/// carry no trace context, and a propagator call is not free.
pub fn extract_if_present(headers: &HeaderMap) -> Context {
    if w3c::enabled() {
        // Absence costs two header lookups there.
        return extract(headers);
    }
    const FIELDS: [&str; 4] = ["traceparent", "baggage", "b3", "x-b3-traceid"];
    if FIELDS.iter().any(|f| headers.contains_key(*f)) {
        extract(headers)
    } else {
        Context::new()
    }
}

/// Makes the trace context a caller sent in `headers` the parent of `span` (an
/// inbound request's server span). Without one, `span` starts a new trace.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    set_parent(span, extract(headers));
}

/// Makes `cx` (from [`extract`]) the parent of `span` when it carries a trace.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace ID of `span` as 32 hex digits, if it is part of a trace, for log
/// lines. For a span the mesh did not make (`Span::none()`), the current
/// OpenTelemetry context's.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_none() {
        Context::map_current(context_trace_id)
    } else {
        context_trace_id(&span.context())
    }
}

/// The trace ID `cx` carries as 32 hex digits, if any.
pub fn context_trace_id(cx: &Context) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Whether the mesh's layers make spans (see [`record_spans`]).
const SPANS_AUTO: u8 = 0;
const SPANS_ON: u8 = 1;
const SPANS_OFF: u8 = 2;
static SPAN_MODE: AtomicU8 = AtomicU8::new(SPANS_AUTO);

/// Tells the mesh's layers whether to make spans for each call, attempt and
/// inbound request.
///
/// A span costs microseconds (tracing-opentelemetry builds an OpenTelemetry
/// span for it); without an exporter nobody sees it, so [`init`](super::init)
/// turns spans on only when it starts a span exporter and its sampler can keep
/// anything. With spans off the trace context is still carried: the server
/// layer attaches the caller's context while the handler runs, and the client
/// layer injects the current context, so traces pass through unbroken and log
/// lines still carry the caller's trace ID. Apps that export spans with a
/// tracer of their own, not through `init`, call `record_spans(true)`. Until
/// either happens, spans are made whenever a `tracing` subscriber wants them.
pub fn record_spans(on: bool) {
    SPAN_MODE.store(if on { SPANS_ON } else { SPANS_OFF }, Ordering::Relaxed);
}

/// Whether `cx` carries a trace (a valid span context) or baggage: something
/// worth attaching while a handler runs.
pub fn carries_context(cx: &Context) -> bool {
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::TraceContextExt;
    cx.span().span_context().is_valid() || !cx.baggage().is_empty()
}

/// Whether the mesh's layers make spans at all now (for callers that need no
/// parent to decide).
pub fn spans_on() -> bool {
    SPAN_MODE.load(Ordering::Relaxed) != SPANS_OFF
}

/// `http.request.method` as the semantic conventions bound it: the known
/// methods, everything else `_OTHER` (a peer must not mint label values).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// A small number for [`method_label`]'s value (0 for `_OTHER`), to key caches
/// of metric handles without hashing strings.
pub fn method_code(method: &http::Method) -> u8 {
    match *method {
        http::Method::GET => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        http::Method::PATCH => 7,
        http::Method::CONNECT => 8,
        http::Method::TRACE => 9,
        _ => 0,
    }
}

/// The size of a body when it is known before it is read: the body's exact
/// size hint (a buffered body, or hyper's from `Content-Length`), else the
/// `Content-Length` header. `None` for bodies streamed without a length: body
/// size metrics skip those rather than wrap every body to count its frames.
pub fn body_size(headers: &HeaderMap, hint: &http_body::SizeHint) -> Option<u64> {
    hint.exact().or_else(|| {
        headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// `http.response.status_code` as a label value without allocating for the
/// codes a service returns in practice.
pub fn status_label(status: http::StatusCode) -> metrics::SharedString {
    let s = match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        412 => "412",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "499",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        // A `StatusCode` is 100..=999, so this stays bounded too.
        other => return metrics::SharedString::from_owned(other.to_string()),
    };
    metrics::SharedString::const_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_collapse_to_other() {
        let weird = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&weird), "_OTHER");
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_code(&weird), 0);
    }

    #[test]
    fn body_size_is_the_exact_hint_or_the_content_length() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            body_size(&headers, &http_body::SizeHint::with_exact(7)),
            Some(7)
        );
        assert_eq!(body_size(&headers, &http_body::SizeHint::new()), None);
        headers.insert(http::header::CONTENT_LENGTH, "42".parse().unwrap());
        assert_eq!(body_size(&headers, &http_body::SizeHint::new()), Some(42));
    }

    #[test]
    fn status_labels_are_the_numeric_code() {
        assert_eq!(&*status_label(http::StatusCode::OK), "200");
        assert_eq!(&*status_label(http::StatusCode::IM_A_TEAPOT), "418");
    }
}
