//! Trace IDs in the app's ordinary log lines, so a log line leads to its trace
//! and a trace to its log lines.
//!
//! [`TraceIdFormat`] wraps a `tracing_subscriber::fmt` event formatter and ends
//! every line logged inside a trace with `trace_id=… span_id=…`;
//! [`TraceIds::current`] gives the same two values to formatters of your own
//! (JSON, say). Both read the current OpenTelemetry context, which the mesh's
//! server layer sets for the handler from the caller's `traceparent` whether or
//! not spans are exported.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! # fn run(guard: &mesh_core::telemetry::TelemetryGuard) {
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().event_format(
//!         mesh_core::telemetry::TraceIdFormat::new(tracing_subscriber::fmt::format()),
//!     ))
//!     .with(guard.otel_layer())
//!     .init();
//! # }
//! ```

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The trace and span a log line belongs to, as W3C hex strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceIds {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
}

impl TraceIds {
    /// The IDs of the current span (an OpenTelemetry-backed `tracing` span if one
    /// is entered, else the current OpenTelemetry context); `None` outside any
    /// trace.
    pub fn current() -> Option<TraceIds> {
        let mut cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            cx = Context::current();
        }
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceIds {
            trace_id: sc.trace_id().to_string(),
            span_id: sc.span_id().to_string(),
        })
    }
}

/// A `fmt` event formatter that appends ` trace_id=… span_id=…` to every line
/// logged inside a trace (lines outside one are left as `inner` writes them).
///
/// Lines that carry IDs are formatted into a buffer first, so they lose
/// `inner`'s ANSI colours.
#[derive(Debug, Clone, Default)]
pub struct TraceIdFormat<F> {
    inner: F,
}

impl<F> TraceIdFormat<F> {
    /// Wraps `inner`, e.g. `tracing_subscriber::fmt::format()`.
    pub fn new(inner: F) -> Self {
        TraceIdFormat { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIdFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(ids) = TraceIds::current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(
            writer,
            "{body} trace_id={} span_id={}",
            ids.trace_id, ids.span_id
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use parking_lot::Mutex;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn lines_inside_a_trace_carry_its_ids_and_others_none() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .event_format(TraceIdFormat::new(tracing_subscriber::fmt::format()))
            .finish();
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let remote = Context::new().with_remote_span_context(SpanContext::new(
            trace,
            span,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let _attached = remote.attach();
            tracing::info!("inside");
        });
        let text = String::from_utf8(buffer.0.lock().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!lines[0].contains("trace_id"), "{text}");
        assert!(
            lines[1].ends_with(
                "inside trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7"
            ),
            "{text}"
        );
    }
}
