//! Head sampling decided before a span is built.
//!
//! The OpenTelemetry SDK samples when a span starts, and tracing-opentelemetry
//! starts a span only after `tracing` has built it: every layer has visited
//! its fields (the fmt layer formats them into a string) and its attributes
//! are collected. With 10% of traces sampled, nine requests in ten paid for a
//! span the sampler then dropped: about as much again as the rest of the
//! client's work per request (BENCHMARKS.md, `mesh+otel`).
//!
//! When [`init`](super::init) installs the tracer provider it tells this module
//! the sampler, so a layer decides first ([`head`]):
//! - a call with a parent follows the parent's sampled flag (`parentbased_*`)
//!   or applies the trace ID ratio test to the parent's trace ID
//!   (`traceidratio`), as the SDK would;
//! - a call that starts a trace draws its trace ID here and applies the SDK's
//!   ratio test to it. Kept: the span is built, and the ID generator `init`
//!   installs hands the SDK that same trace ID, so the SDK's sampler agrees.
//!   Dropped: no span, but the new trace still goes on with its sampled flag
//!   off, so the server's parent-based sampler drops its side too; a trace is
//!   kept whole or not at all.
//!
//! Under a tracer provider the mesh did not install the sampler is unknown,
//! and spans are built as before for the SDK to decide.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::otel_env::SamplerKind;
use super::spans_on;

/// What a layer does about the span of a call it is about to make.
#[derive(Debug)]
pub enum Head {
    /// No span: spans are off, or the sampler drops this call's span because
    /// of its parent. The current context goes on unchanged.
    Skip,
    /// No span, and the call starts a trace the sampler drops: run it in this
    /// context (the new trace, not sampled), so it is propagated with the
    /// sampled flag off and nothing below samples it again.
    Unsampled(Context),
    /// Make the span, through [`SpanStart::build`].
    Span(SpanStart),
}

/// How the span a [`Head::Span`] asks for is made: for a call that starts a
/// trace the mesh sampled, with the trace ID the decision was made on.
#[derive(Debug)]
pub struct SpanStart(Option<TraceId>);

impl SpanStart {
    /// Builds the span with `make`, and starts it with the sampled trace ID
    /// when the call starts a trace.
    pub fn build(self, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let Some(trace_id) = self.0 else {
            return make();
        };
        PINNED_TRACE.with(|pinned| pinned.set(Some(trace_id)));
        let span = make();
        // Starting the OpenTelemetry span is what draws its trace ID: do it
        // now, while the pinned ID is there to be taken.
        drop(span.context());
        PINNED_TRACE.with(|pinned| pinned.set(None));
        span
    }
}

/// Decides whether the call about to be made under `parent` gets a span (see
/// the module docs).
pub fn head(parent: &Context) -> Head {
    if !spans_on() {
        return Head::Skip;
    }
    let span = parent.span();
    let sc = span.span_context();
    let root = match ROOT.load(Ordering::Relaxed) {
        // Not ours to predict: the SDK decides, but a parent-based sampler is
        // known to drop what an unsampled parent starts.
        UNKNOWN => {
            return if parent_based() && sc.is_valid() && !sc.is_sampled() {
                Head::Skip
            } else {
                Head::Span(SpanStart(None))
            }
        }
        root => root,
    };
    if sc.is_valid() {
        let keep = if parent_based() {
            sc.is_sampled()
        } else {
            root == ALWAYS || (root == RATIO && ratio_keeps(sc.trace_id()))
        };
        return if keep {
            Head::Span(SpanStart(None))
        } else {
            Head::Skip
        };
    }
    if root == ALWAYS {
        return Head::Span(SpanStart(None));
    }
    let ids = RandomIdGenerator::default();
    let trace_id = ids.new_trace_id();
    if root == RATIO && ratio_keeps(trace_id) {
        Head::Span(SpanStart(Some(trace_id)))
    } else {
        Head::Unsampled(unsampled(parent, trace_id, ids.new_span_id()))
    }
}

/// `parent` (its baggage) with a new trace that is not sampled.
fn unsampled(parent: &Context, trace_id: TraceId, span_id: SpanId) -> Context {
    parent.with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::default(),
        false,
        TraceState::NONE,
    ))
}

/// The SDK's `TraceIdRatioBased` test: the low 63 bits of the trace ID below
/// the ratio's share of 2^63.
fn ratio_keeps(trace_id: TraceId) -> bool {
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    (low >> 1) < RATIO_BOUND.load(Ordering::Relaxed)
}

const UNKNOWN: u8 = 0;
const ALWAYS: u8 = 1;
const NEVER: u8 = 2;
const RATIO: u8 = 3;
/// What the installed sampler does with a root span.
static ROOT: AtomicU8 = AtomicU8::new(UNKNOWN);
/// The ratio's share of 2^63, as the SDK computes it.
static RATIO_BOUND: AtomicU64 = AtomicU64::new(0);
/// Whether a span with a parent follows the parent's decision.
static PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// Whether the sampler follows the parent's decision (`parentbased_*`, and
/// when unknown).
fn parent_based() -> bool {
    PARENT_BASED.load(Ordering::Relaxed)
}

/// Tells [`head`] the sampler `OTEL_TRACES_SAMPLER` chose; `installed` when
/// `init` installed the tracer provider (with [`PinnedIds`]), so what the
/// sampler does with a root span can be decided here.
pub(crate) fn configure(kind: SamplerKind, installed: bool) {
    let (root, ratio, parent_based) = match kind {
        SamplerKind::AlwaysOn => (ALWAYS, 1.0, false),
        SamplerKind::AlwaysOff => (NEVER, 0.0, false),
        SamplerKind::TraceIdRatio(r) => (RATIO, r, false),
        SamplerKind::ParentBasedAlwaysOn => (ALWAYS, 1.0, true),
        SamplerKind::ParentBasedAlwaysOff => (NEVER, 0.0, true),
        SamplerKind::ParentBasedTraceIdRatio(r) => (RATIO, r, true),
    };
    let (root, bound) = match root {
        // The SDK keeps everything from 1.0 up.
        RATIO if ratio >= 1.0 => (ALWAYS, u64::MAX),
        RATIO => (RATIO, (ratio.max(0.0) * (1u64 << 63) as f64) as u64),
        other => (other, 0),
    };
    RATIO_BOUND.store(bound, Ordering::Relaxed);
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    ROOT.store(if installed { root } else { UNKNOWN }, Ordering::Relaxed);
}

thread_local! {
    /// The trace ID [`SpanStart::build`] wants the span being started to get.
    static PINNED_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The tracer provider's ID generator: random IDs, except the trace ID of a
/// root span [`SpanStart::build`] is starting, which was drawn (and sampled) before.
#[derive(Debug, Default)]
pub(crate) struct PinnedIds(RandomIdGenerator);

impl IdGenerator for PinnedIds {
    fn new_trace_id(&self) -> TraceId {
        PINNED_TRACE
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}
