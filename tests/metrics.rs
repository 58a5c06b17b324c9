//! The `metrics` feature: the node's statistics reach a `metrics` recorder under their
//! documented names, with the right values. (Run with `--features metrics`.)
#[path = "integration/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libchirp::Message;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use support::{config, echo_node, inbox_node, recv, v4};

/// A recorder that keeps the last value of every counter and gauge, by name and labels.
#[derive(Default, Clone)]
struct Last(Arc<Mutex<HashMap<String, f64>>>);

struct Cell(String, Last);

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        *self.1 .0.lock().unwrap().entry(self.0.clone()).or_default() += v as f64;
    }
    fn absolute(&self, v: u64) {
        self.1 .0.lock().unwrap().insert(self.0.clone(), v as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        *self.1 .0.lock().unwrap().entry(self.0.clone()).or_default() += v;
    }
    fn decrement(&self, v: f64) {
        *self.1 .0.lock().unwrap().entry(self.0.clone()).or_default() -= v;
    }
    fn set(&self, v: f64) {
        self.1 .0.lock().unwrap().insert(self.0.clone(), v);
    }
}

fn name(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for Last {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(name(key), self.clone())))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Cell(name(key), self.clone())))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn the_statistics_reach_a_metrics_recorder_by_name() {
    let echo = echo_node(config(true));
    let (node, inbox) = inbox_node(config(true));
    for i in 0..5u8 {
        let sending = node.send(Message::to(v4(&echo), vec![i; 10]));
        drop(recv(&inbox, "echo"));
        sending.wait().unwrap();
    }
    let refused = node.send(Message::to("127.0.0.1:9".parse().unwrap(), b"x".to_vec()));
    assert!(refused.wait().is_err());
    // The failed dial's connection goes away; then the gauges hold still.
    assert!(support::eventually(
        std::time::Duration::from_secs(10),
        || { node.connection_count() == 1 }
    ));
    let stats = node.stats();
    let last = Last::default();
    metrics::with_local_recorder(&last, || node.publish_metrics());
    let got = last.0.lock().unwrap().clone();
    let v = |k: &str| {
        *got.get(k)
            .unwrap_or_else(|| panic!("{k} not published: {got:#?}"))
    };
    assert_eq!(v("chirp_messages_sent_total"), stats.msgs_out as f64);
    assert_eq!(v("chirp_messages_sent_total"), 5.0);
    assert_eq!(v("chirp_sent_bytes_total"), 50.0);
    assert_eq!(v("chirp_messages_received_total"), 5.0);
    assert_eq!(v("chirp_acks_received_total"), 5.0);
    assert_eq!(v("chirp_connections_dialed_total"), stats.dialed as f64);
    assert_eq!(v("chirp_sends_failed_total{kind=cannot_connect}"), 1.0);
    assert_eq!(v("chirp_connections_refused_total{reason=capacity}"), 0.0);
    assert_eq!(
        v("chirp_connections_closed_total{reason=other}"),
        stats.closed_other as f64
    );
    assert_eq!(v("chirp_connections"), stats.connections as f64);
    assert!(
        v("chirp_threads") >= 3.0,
        "timer, accept, a reader at least"
    );
    assert_eq!(
        got.len(),
        37,
        "6 gauges and 31 counters (by label): {got:#?}"
    );
    node.close();
    echo.close();
}

/// A TLS node publishes the seconds until its certificate expires, and a reload moves it.
#[test]
fn the_certificate_expiry_is_a_gauge_in_seconds_that_follows_a_reload() {
    use std::time::{Duration, SystemTime};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chirp-metrics-pki-{}", std::process::id()));
    let pki = libchirp::pki::TestPki::generate(&dir).unwrap();
    let mut c = config(true);
    c.disable_encryption = false;
    c.cert_chain = Some(pki.node_v3.clone());
    c.dh_params = Some(pki.dh_params.clone());
    let node = libchirp::Node::start(c, drop).unwrap();
    let gauge = |node: &libchirp::Node| {
        let last = Last::default();
        metrics::with_local_recorder(&last, || node.publish_metrics());
        let got = last.0.lock().unwrap().clone();
        *got.get("chirp_tls_certificate_expiry_seconds")
            .unwrap_or_else(|| panic!("no expiry gauge: {got:#?}"))
    };
    let expect = |until: SystemTime| {
        until
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs_f64()
    };
    let ten_years = expect(node.stats().certificate.unwrap().not_after);
    let g = gauge(&node);
    assert!(
        (g - ten_years).abs() < 60.0,
        "gauge {g} s, certificate {ten_years} s"
    );
    let soon = SystemTime::now() + Duration::from_secs(5 * 86_400);
    let short = pki
        .issue_node("short", SystemTime::now() - Duration::from_secs(60), soon)
        .unwrap();
    node.reload_tls(&short, &pki.dh_params).unwrap();
    let g = gauge(&node);
    assert!(
        (g - expect(soon)).abs() < 60.0,
        "after the reload: gauge {g} s, want ~5 days"
    );
    // Without TLS there is no such gauge.
    let plain = libchirp::Node::start(config(true), drop).unwrap();
    let last = Last::default();
    metrics::with_local_recorder(&last, || plain.publish_metrics());
    assert!(!last
        .0
        .lock()
        .unwrap()
        .contains_key("chirp_tls_certificate_expiry_seconds"));
    let _ = std::fs::remove_dir_all(dir);
}
