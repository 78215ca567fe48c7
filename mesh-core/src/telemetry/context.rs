//! Trace context in and out of HTTP headers, and the bounded attribute values
//! both directions share.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

/// Writes `span`'s trace context (and the current baggage) into `headers` with
/// the propagators `OTEL_PROPAGATORS` chose. Writes nothing when no tracer is
/// installed and no context came in.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Reads a caller's trace context (and baggage) from `headers`.
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Makes the trace context a caller sent in `headers` the parent of `span` (an
/// inbound request's server span). Without one, `span` starts a new trace.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let cx = extract(headers);
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace ID of `span` as 32 hex digits, if it is part of a trace, for log lines.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
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
    }

    #[test]
    fn status_labels_are_the_numeric_code() {
        assert_eq!(&*status_label(http::StatusCode::OK), "200");
        assert_eq!(&*status_label(http::StatusCode::IM_A_TEAPOT), "418");
    }
}
