//! A future polled inside the trace scope of its call: the call's span, or,
//! for a call whose trace is not sampled, that trace's context.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use mesh_core::telemetry::{Head, OtelContext};
use pin_project_lite::pin_project;
use tracing::Span;

/// What a call's future is polled in (see [`Scope::new`]).
pub(crate) enum Scope {
    /// Nothing of its own: the current context goes on.
    None,
    /// The call's span.
    Span(Span),
    /// A trace that is not sampled, started by this call: attached while the
    /// call runs so the layers below propagate it and make no spans.
    Unsampled(OtelContext),
}

impl Scope {
    /// The scope `head` decided on, building the span with `make` when there
    /// is to be one. A disabled span (no subscriber wants it) is not kept:
    /// entering and leaving even a disabled span on every poll is a
    /// measurable part of a request's cost, for nothing.
    pub(crate) fn new(head: Head, make: impl FnOnce() -> Span) -> Self {
        let span = match head {
            Head::Skip => return Scope::None,
            Head::Unsampled(cx) => return Scope::Unsampled(cx),
            Head::Span(start) => start.build(make),
        };
        if span.is_disabled() {
            Scope::None
        } else {
            Scope::Span(span)
        }
    }

    /// The span (a disabled one when there is none), to record fields on.
    pub(crate) fn span(&self) -> &Span {
        match self {
            Scope::Span(span) => span,
            _ => &NO_SPAN,
        }
    }

    /// Runs `f` inside this scope.
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Scope::None => f(),
            Scope::Span(span) => span.in_scope(f),
            Scope::Unsampled(cx) => {
                let _attached = cx.clone().attach();
                f()
            }
        }
    }

    /// The trace ID for log lines: this scope's trace, else the current one.
    pub(crate) fn trace_id(&self) -> Option<String> {
        match self {
            Scope::Unsampled(cx) => mesh_core::telemetry::context_trace_id(cx),
            _ => mesh_core::telemetry::trace_id(self.span()),
        }
    }
}

/// What [`Scope::span`] lends when there is no span of its own.
static NO_SPAN: LazyLock<Span> = LazyLock::new(Span::none);

pin_project! {
    /// Like `tracing`'s `Instrumented`, for a [`Scope`].
    pub(crate) struct Scoped<F> {
        #[pin]
        inner: F,
        scope: Scope,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn new(inner: F, scope: Scope) -> Self {
        Scoped { inner, scope }
    }

    pub(crate) fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        this.scope.in_scope(|| inner.poll(cx))
    }
}
