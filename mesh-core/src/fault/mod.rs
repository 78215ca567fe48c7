//! Fault injection for chaos tests in staging: delay a share of requests, or
//! answer a share of them with an error status without sending them. Off unless
//! configured (`FAULT_DELAY`, `FAULT_ABORT`, per service or per route: a
//! [`SelectedRoute`] extension's faults replace the layer's own).

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};

use crate::config::value;
use crate::route::SelectedRoute;

/// `50ms@10%`: delay 10% of requests by 50 ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayFault {
    /// The delay added.
    pub delay: Duration,
    /// Share of requests delayed (0..=1).
    pub share: f64,
}

/// `503@5%`: answer 5% of requests with 503 without sending them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbortFault {
    /// The status answered.
    pub status: StatusCode,
    /// Share of requests aborted (0..=1).
    pub share: f64,
}

/// A fault setting could not be parsed; says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFaultError(&'static str);

impl fmt::Display for ParseFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ParseFaultError {}

const DELAY: &str = "a delay and a share such as 50ms@10% (share from 0% to 100%), or `off`";
const ABORT: &str =
    "an HTTP status and a share such as 503@5% (status 400-599, share from 0% to 100%), or `off`";

impl FromStr for DelayFault {
    type Err = ParseFaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (delay, share) = s.trim().split_once('@').ok_or(ParseFaultError(DELAY))?;
        Ok(DelayFault {
            delay: value::duration(delay).map_err(|_| ParseFaultError(DELAY))?,
            share: value::percent(share).map_err(|_| ParseFaultError(DELAY))?,
        })
    }
}

impl FromStr for AbortFault {
    type Err = ParseFaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (status, share) = s.trim().split_once('@').ok_or(ParseFaultError(ABORT))?;
        let status = status
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(ParseFaultError(ABORT))?;
        Ok(AbortFault {
            status,
            share: value::percent(share).map_err(|_| ParseFaultError(ABORT))?,
        })
    }
}

/// Optional parsers for the settings: `off` for none.
pub fn parse_delay(s: &str) -> Result<Option<DelayFault>, ParseFaultError> {
    match s.trim() {
        "off" => Ok(None),
        other => other.parse().map(Some),
    }
}

/// See [`parse_delay`].
pub fn parse_abort(s: &str) -> Result<Option<AbortFault>, ParseFaultError> {
    match s.trim() {
        "off" => Ok(None),
        other => other.parse().map(Some),
    }
}

/// The faults a layer injects.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Delay, if any.
    pub delay: Option<DelayFault>,
    /// Abort, if any.
    pub abort: Option<AbortFault>,
}

impl Faults {
    /// Whether anything is injected.
    pub fn is_active(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }
}

/// Injects [`Faults`]: first the delay, then (for the aborted share) a response
/// with the abort status instead of calling the inner service.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Arc<Faults>,
    roll: fn() -> f64,
}

impl FaultLayer {
    /// A layer injecting `faults` at random.
    pub fn new(faults: Faults) -> Self {
        FaultLayer {
            faults: Arc::new(faults),
            roll: rand::random::<f64>,
        }
    }

    #[cfg(test)]
    fn with_roll(faults: Faults, roll: fn() -> f64) -> Self {
        FaultLayer {
            faults: Arc::new(faults),
            roll,
        }
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.faults.clone(),
            roll: self.roll,
        }
    }
}

/// The service [`FaultLayer`] builds.
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: Arc<Faults>,
    roll: fn() -> f64,
}

impl<S, B, RB> tower::Service<Request<B>> for FaultService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The route's faults replace the service's.
        let faults = request
            .extensions()
            .get::<SelectedRoute>()
            .map_or(*self.faults, |r| *r.policy().faults());
        let delay = faults
            .delay
            .filter(|d| (self.roll)() < d.share)
            .map(|d| d.delay);
        let abort = faults
            .abort
            .filter(|a| (self.roll)() < a.share)
            .map(|a| a.status);
        if let Some(status) = abort {
            return Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let mut response = Response::new(RB::default());
                *response.status_mut() = status;
                Ok(response)
            });
        }
        match delay {
            None => Box::pin(self.inner.call(request)),
            Some(delay) => {
                // The inner service was made ready by poll_ready: call it after the
                // delay on a clone swapped in, leaving a fresh clone here (the
                // tower idiom for calling later).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    ready.call(request).await
                })
            }
        }
    }
}
