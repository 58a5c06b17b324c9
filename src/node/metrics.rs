//! The `metrics` feature: the node's statistics published through the `metrics` facade, so
//! that any exporter (Prometheus and others) picks them up. Counters are set to their
//! absolute value (they only grow); gauges are set.

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use super::Stats;

/// Every metric with its unit and help text, so an exporter can print `# HELP` and `# TYPE`
/// lines. Cheap enough to run on every publication (once a second), which also reaches a
/// recorder installed after the node started.
fn describe() {
    for (name, unit, help) in [
        (
            "chirp_connections",
            Unit::Count,
            "Open connections, handshaken or not.",
        ),
        (
            "chirp_connections_handshaking",
            Unit::Count,
            "Accepted connections still in their TLS or chirp handshake.",
        ),
        (
            "chirp_messages_queued",
            Unit::Count,
            "Messages waiting to be written, over all remotes.",
        ),
        (
            "chirp_messages_in_flight",
            Unit::Count,
            "Synchronous messages written and waiting for their ACK.",
        ),
        (
            "chirp_slots_in_use",
            Unit::Count,
            "Received messages not yet released.",
        ),
        (
            "chirp_threads",
            Unit::Count,
            "Threads the node runs (readers, writers, accept, timer).",
        ),
    ] {
        describe_gauge!(name, unit, help);
    }
    for (name, unit, help) in [
        (
            "chirp_connections_accepted_total",
            Unit::Count,
            "Connections accepted.",
        ),
        (
            "chirp_connections_dialed_total",
            Unit::Count,
            "Connections this node dialed.",
        ),
        (
            "chirp_connections_refused_total",
            Unit::Count,
            "Connections refused, by reason.",
        ),
        (
            "chirp_connections_closed_total",
            Unit::Count,
            "Connections closed, by reason.",
        ),
        (
            "chirp_accept_errors_total",
            Unit::Count,
            "Failed accept() calls (e.g. out of descriptors).",
        ),
        (
            "chirp_messages_received_total",
            Unit::Count,
            "Messages received.",
        ),
        (
            "chirp_messages_sent_total",
            Unit::Count,
            "Messages written.",
        ),
        (
            "chirp_received_bytes_total",
            Unit::Bytes,
            "Message bytes received (header and data; framing not counted).",
        ),
        (
            "chirp_sent_bytes_total",
            Unit::Bytes,
            "Message bytes written (header and data; framing not counted).",
        ),
        ("chirp_acks_received_total", Unit::Count, "ACKs received."),
        ("chirp_acks_sent_total", Unit::Count, "ACKs written."),
        (
            "chirp_sends_failed_total",
            Unit::Count,
            "Sends that completed with an error, by kind.",
        ),
        (
            "chirp_requests_answered_total",
            Unit::Count,
            "Requests whose answer arrived.",
        ),
        (
            "chirp_requests_timed_out_total",
            Unit::Count,
            "Requests that timed out.",
        ),
        (
            "chirp_events_dropped_total",
            Unit::Count,
            "Events dropped because the events channel was full.",
        ),
    ] {
        describe_counter!(name, unit, help);
    }
}

/// Publishes `s` to the installed `metrics` recorder (a no-op without one).
pub(crate) fn publish(s: &Stats) {
    describe();
    gauge!("chirp_connections").set(s.connections as f64);
    gauge!("chirp_connections_handshaking").set(s.handshaking as f64);
    gauge!("chirp_messages_queued").set(s.queued as f64);
    gauge!("chirp_messages_in_flight").set(s.in_flight as f64);
    gauge!("chirp_slots_in_use").set(s.slots_in_use as f64);
    gauge!("chirp_threads").set(s.threads as f64);
    if let Some(cert) = &s.certificate {
        let left = match cert.not_after.duration_since(std::time::SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        gauge!("chirp_tls_certificate_expiry_seconds").set(left.round());
    }
    counter!("chirp_connections_accepted_total").absolute(s.accepted);
    counter!("chirp_connections_dialed_total").absolute(s.dialed);
    for (reason, v) in [
        ("capacity", s.refused_capacity),
        ("handshaking", s.refused_handshaking),
        ("tls", s.refused_tls),
        ("protocol", s.refused_protocol),
        ("handshake_timeout", s.refused_handshake_timeout),
        ("resources", s.refused_resources),
    ] {
        counter!("chirp_connections_refused_total", "reason" => reason).absolute(v);
    }
    for (reason, v) in [
        ("peer", s.closed_peer),
        ("timeout", s.closed_timeout),
        ("gc", s.closed_gc),
        ("protocol", s.closed_protocol),
        ("tls", s.closed_tls),
        ("node", s.closed_node),
        ("other", s.closed_other),
    ] {
        counter!("chirp_connections_closed_total", "reason" => reason).absolute(v);
    }
    counter!("chirp_accept_errors_total").absolute(s.accept_errors);
    counter!("chirp_messages_received_total").absolute(s.msgs_in);
    counter!("chirp_messages_sent_total").absolute(s.msgs_out);
    counter!("chirp_received_bytes_total").absolute(s.bytes_in);
    counter!("chirp_sent_bytes_total").absolute(s.bytes_out);
    counter!("chirp_acks_received_total").absolute(s.acks_in);
    counter!("chirp_acks_sent_total").absolute(s.acks_out);
    for (kind, v) in [
        ("timeout", s.sends_failed_timeout),
        ("cannot_connect", s.sends_failed_cannot_connect),
        ("connection", s.sends_failed_connection),
        ("shutdown", s.sends_failed_shutdown),
        ("limit", s.sends_failed_limit),
        ("other", s.sends_failed_other),
    ] {
        counter!("chirp_sends_failed_total", "kind" => kind).absolute(v);
    }
    counter!("chirp_requests_answered_total").absolute(s.requests_answered);
    counter!("chirp_requests_timed_out_total").absolute(s.requests_timed_out);
    counter!("chirp_events_dropped_total").absolute(s.events_dropped);
}
