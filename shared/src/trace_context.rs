//! W3C trace context (`traceparent`), carried from an HTTP request into the events it
//! causes, so a saga can be followed across processes: in the logs (every line has the
//! `trace_id`) and, when spans are exported, as one trace.
//!
//! With spans exported, a context is always the one of a real span (the server span, the
//! outbox append, the relay's producer span), so a process that continues it becomes
//! that span's child; without, it is made up as before (same trace id, a new span id).

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl TraceContext {
    /// A new trace, for a request that did not bring one.
    pub fn new_root() -> Self {
        TraceContext { trace_id: random_nonzero(), span_id: random_nonzero() as u64, sampled: true }
    }

    /// A new span in the same trace.
    pub fn child(self) -> Self {
        TraceContext { span_id: random_nonzero() as u64, ..self }
    }

    /// `00-<trace-id>-<parent-id>-<flags>`; versions above 00 are read by their first
    /// four fields, as the spec asks.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ![version, trace_id, span_id, flags].into_iter().all(hex) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok().filter(|&id| id != 0)?;
        let span_id = u64::from_str_radix(span_id, 16).ok().filter(|&id| id != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Makes `span` continue `parent` (a caller's header, an outbox row, a message's
    /// header), and returns the context `span` runs under: its own when spans are
    /// exported, else `parent`'s child, or a new trace. Call it before entering `span`.
    pub fn continue_in(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
        if let Some(parent) = parent {
            // Fails only when spans are not exported (or this one is filtered out).
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.span_context()));
        }
        Self::of(span).unwrap_or_else(|| parent.map_or_else(Self::new_root, Self::child))
    }

    /// The context of `span` as exported, if it is (this starts the span).
    pub fn of(span: &tracing::Span) -> Option<TraceContext> {
        let context = span.context();
        let exported = context.span().span_context().clone();
        exported.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(exported.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(exported.span_id().to_bytes()),
            sampled: exported.is_sampled(),
        })
    }

    fn span_context(self) -> SpanContext {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        )
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

fn random_nonzero() -> u128 {
    // A v4 UUID is 122 random bits; never zero.
    Uuid::new_v4().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_a_traceparent() {
        let ctx = TraceContext::parse(HEADER).unwrap();
        assert_eq!(ctx.to_string(), HEADER);
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        // Spans not exported (no layer here): the caller's trace, a made-up span id.
        let ctx = TraceContext::continue_in(&tracing::Span::none(), TraceContext::parse(HEADER));
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.to_string(), HEADER);
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_missing_or_bad_header_starts_a_new_trace() {
        let a = TraceContext::continue_in(&tracing::Span::none(), None);
        let b = TraceContext::continue_in(&tracing::Span::none(), TraceContext::parse("garbage"));
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(TraceContext::parse(&a.to_string()).is_some());
    }
}
