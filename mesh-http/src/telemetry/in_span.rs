//! A future polled inside its span only when the span records something.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tracing::Span;

pin_project! {
    /// Like `tracing`'s `Instrumented`, but a disabled span (no exporter, or not
    /// sampled) is not kept: entering and leaving even a disabled span on every
    /// poll is a measurable part of a request's cost, for nothing.
    pub(crate) struct InSpan<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

/// What [`InSpan::span`] lends when there is no span of its own.
static NO_SPAN: LazyLock<Span> = LazyLock::new(Span::none);

impl<F> InSpan<F> {
    pub(crate) fn new(inner: F, span: Span) -> Self {
        InSpan {
            inner,
            span: (!span.is_disabled()).then_some(span),
        }
    }

    /// The span (a disabled one when there is none), to record fields on.
    pub(crate) fn span(&self) -> &Span {
        self.span.as_ref().unwrap_or(&NO_SPAN)
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(Span::enter);
        this.inner.poll(cx)
    }
}
