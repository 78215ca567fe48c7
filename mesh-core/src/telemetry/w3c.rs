//! W3C `traceparent` read and written directly, for the default propagators
//! (`OTEL_PROPAGATORS=tracecontext,baggage`).
//!
//! Every request pays for trace context, so the common case skips the
//! OpenTelemetry propagator machinery (the global propagator's lock, a `Vec`
//! of header parts, the `tracestate` parse, a `format!`, an empty `tracestate`
//! header written out, dynamic dispatch per propagator). Only the canonical
//! form is handled here: version `00`, lowercase hex, no `tracestate`, no
//! baggage. Anything else returns `None` and goes through the SDK's
//! propagators, so their answer stays the reference for every odd input.

use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Whether the installed propagators are W3C trace context, optionally with
/// baggage, and nothing else: only then may this module stand in for them.
static W3C_ONLY: AtomicBool = AtomicBool::new(false);

/// Records whether the propagators just installed allow the direct path.
pub(crate) fn set_enabled(enabled: bool) {
    W3C_ONLY.store(enabled, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    W3C_ONLY.load(Ordering::Relaxed)
}

/// Above this many header values, [`extract`] looks its three names up in the
/// map instead of reading every header once: each look-up hashes a custom name
/// byte by byte, which costs more than comparing a few short names, but not
/// more than comparing a hundred.
const SCAN_MAX: usize = 16;

/// The trace-context headers of a request, the first value of each name (what
/// `HeaderMap::get` returns).
#[derive(Debug, Default, Clone, Copy)]
struct Fields<'a> {
    traceparent: Option<&'a HeaderValue>,
    tracestate: bool,
    baggage: bool,
}

impl<'a> Fields<'a> {
    /// One pass over the names in `headers` when there are few of them (most
    /// requests carry none of these three, and a look-up of an absent custom
    /// name still hashes it), look-ups otherwise. The pass reads names only
    /// (a step through the map's entries, where the pairs' iterator also
    /// follows each name's extra values); the `traceparent` value, when there
    /// is one, is looked up after it.
    fn read(headers: &'a HeaderMap) -> Self {
        if headers.len() > SCAN_MAX {
            return Fields {
                traceparent: headers.get(&TRACEPARENT),
                tracestate: headers.contains_key(&TRACESTATE),
                baggage: headers.contains_key(&BAGGAGE),
            };
        }
        let mut fields = Fields::default();
        let mut traceparent = false;
        for name in headers.keys() {
            match name.as_str() {
                "traceparent" => traceparent = true,
                "tracestate" => fields.tracestate = true,
                "baggage" => fields.baggage = true,
                _ => {}
            }
        }
        if traceparent {
            fields.traceparent = headers.get(&TRACEPARENT);
        }
        fields
    }
}

/// The caller's context from `headers`, when the direct path can read it:
/// an empty context when there is neither a `traceparent` nor baggage, the
/// remote span context of a canonical `traceparent`; `None` for anything
/// the SDK's propagators must judge (baggage, `tracestate`, other versions,
/// malformed values).
pub(crate) fn extract(headers: &HeaderMap) -> Option<Context> {
    let fields = Fields::read(headers);
    if fields.baggage {
        return None;
    }
    let Some(value) = fields.traceparent else {
        return Some(Context::new());
    };
    if fields.tracestate {
        return None;
    }
    let sc = parse(value.as_bytes())?;
    Some(Context::new().with_remote_span_context(sc))
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase, both IDs
/// non-zero.
fn parse(value: &[u8]) -> Option<SpanContext> {
    if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = hex::<16>(&value[3..35])?;
    let span = hex::<8>(&value[36..52])?;
    let flags = hex::<1>(&value[53..55])?[0];
    let trace_id = TraceId::from_bytes(trace);
    let span_id = SpanId::from_bytes(span);
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // Only the sampled bit is defined; the others are zeroed (W3C "other flags").
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::NONE,
    ))
}

/// Lowercase hex digits to `N` bytes.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Writes `cx`'s `traceparent` into `headers`. `false` when the SDK's
/// propagators must do it (baggage to carry, a non-empty `tracestate`);
/// `true` when done, which includes "nothing to write" (no valid span
/// context and no baggage).
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) -> bool {
    use opentelemetry::baggage::BaggageExt;
    if !cx.baggage().is_empty() {
        return false;
    }
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return true;
    }
    if *sc.trace_state() != TraceState::NONE {
        return false;
    }
    let mut line = [0u8; 55];
    line[..3].copy_from_slice(b"00-");
    write_hex(&mut line[3..35], &sc.trace_id().to_bytes());
    line[35] = b'-';
    write_hex(&mut line[36..52], &sc.span_id().to_bytes());
    line[52] = b'-';
    write_hex(
        &mut line[53..55],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    let value = HeaderValue::from_bytes(&line).expect("hex digits and dashes are a valid header");
    headers.insert(TRACEPARENT.clone(), value);
    true
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    /// What the SDK's propagator reads from `value`, for comparison.
    fn sdk(value: &str) -> SpanContext {
        let mut map = std::collections::HashMap::new();
        map.insert("traceparent".to_string(), value.to_string());
        TraceContextPropagator::new()
            .extract(&map)
            .span()
            .span_context()
            .clone()
    }

    #[test]
    fn direct_parse_agrees_with_the_sdk_or_defers_to_it() {
        let cases = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "garbage",
            "",
        ];
        for case in cases {
            let reference = sdk(case);
            match parse(case.as_bytes()) {
                Some(direct) => assert_eq!(direct, reference, "{case}"),
                // Deferred: the SDK decides; the direct path never accepts
                // what the SDK would turn down.
                None => assert!(
                    !reference.is_valid() || !case.starts_with("00-") || case.len() != 55,
                    "{case} is canonical and valid but was not parsed"
                ),
            }
        }
    }

    #[test]
    fn extract_defers_baggage_and_tracestate_and_reads_absence_as_empty() {
        let mut headers = HeaderMap::new();
        let cx = extract(&headers).expect("nothing to read");
        assert!(!cx.span().span_context().is_valid());
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = extract(&headers).expect("canonical");
        assert!(cx.span().span_context().is_remote());
        headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        assert!(extract(&headers).is_none());
        headers.remove("tracestate");
        headers.insert("baggage", "user=alice".parse().unwrap());
        assert!(extract(&headers).is_none());
    }

    #[test]
    fn extract_reads_the_same_with_few_headers_and_with_many() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace_id = |headers: &HeaderMap| {
            extract(headers).map(|cx| cx.span().span_context().trace_id().to_string())
        };
        for filler in [0, 2, SCAN_MAX + 1] {
            let mut headers = HeaderMap::new();
            for i in 0..filler {
                headers.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert_eq!(
                trace_id(&headers).as_deref(),
                Some("00000000000000000000000000000000"),
                "{filler} other headers, no trace context"
            );
            headers.append("traceparent", traceparent.parse().unwrap());
            // A second value does not replace the first, as with `get`.
            headers.append("traceparent", "garbage".parse().unwrap());
            assert_eq!(
                trace_id(&headers).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{filler} other headers"
            );
            headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
            assert!(
                trace_id(&headers).is_none(),
                "{filler}: tracestate deferred"
            );
            headers.remove("tracestate");
            headers.insert("baggage", "user=alice".parse().unwrap());
            assert!(trace_id(&headers).is_none(), "{filler}: baggage deferred");
        }
    }

    #[test]
    fn inject_writes_what_the_sdk_writes_and_no_empty_tracestate() {
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ] {
            let cx = Context::new().with_remote_span_context(sdk(value));
            let mut headers = HeaderMap::new();
            assert!(inject(&cx, &mut headers));
            assert_eq!(headers["traceparent"], value);
            assert!(!headers.contains_key("tracestate"));
        }
        let mut headers = HeaderMap::new();
        assert!(inject(&Context::new(), &mut headers), "nothing to carry");
        assert!(headers.is_empty());
    }
}
