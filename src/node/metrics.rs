//! The `metrics` feature: the node's statistics published through the `metrics` facade, so
//! that any exporter (Prometheus and others) picks them up. Counters are set to their
//! absolute value (they only grow); gauges are set.

use metrics::{counter, gauge};

use super::Stats;

/// Publishes `s` to the installed `metrics` recorder (a no-op without one).
pub(crate) fn publish(s: &Stats) {
    gauge!("chirp_connections").set(s.connections as f64);
    gauge!("chirp_connections_handshaking").set(s.handshaking as f64);
    gauge!("chirp_messages_queued").set(s.queued as f64);
    gauge!("chirp_messages_in_flight").set(s.in_flight as f64);
    gauge!("chirp_slots_in_use").set(s.slots_in_use as f64);
    gauge!("chirp_threads").set(s.threads as f64);
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
    counter!("chirp_bytes_received_total").absolute(s.bytes_in);
    counter!("chirp_bytes_sent_total").absolute(s.bytes_out);
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
