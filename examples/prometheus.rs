//! A node whose statistics a Prometheus server can scrape.
//!
//! ```text
//! cargo run --release --features metrics --example prometheus -- [NODE_PORT [METRICS_PORT [CERT_CHAIN DH_PARAMS]]]
//! ```
//!
//! Runs an echo node (every message is sent back to its sender) on NODE_PORT (default 2998;
//! 0 = any free port) and serves its statistics at `http://127.0.0.1:METRICS_PORT/metrics`
//! (default 9464; 0 = any free port). It prints `listening on PORT` and
//! `metrics on http://127.0.0.1:PORT/metrics`. Without CERT_CHAIN and DH_PARAMS the node does
//! not encrypt.
//!
//! The exposition text is rendered by the `metrics-exporter-prometheus` crate, installed as
//! the process's `metrics` recorder; the node publishes its [`libchirp::Stats`] to it every
//! second (the `metrics` feature) and once more right before each scrape, so a scrape never
//! shows figures older than the request. The HTTP side is `tiny_http`, a small blocking server:
//! like the rest of this crate the example needs no async runtime, and it can bind port 0
//! and say which port it got.
//!
//! Point a Prometheus at it with a scrape job (see README "Monitoring with Prometheus"):
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: chirp
//!     static_configs:
//!       - targets: ["127.0.0.1:9464"]
//! ```
use std::sync::Arc;

use libchirp::{Config, Node};
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |i: usize, default: u16| -> Result<u16, String> {
        match args.get(i) {
            None => Ok(default),
            Some(p) => p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number from 0 to 65535")),
        }
    };
    let (node_port, metrics_port) = (port(0, 2998)?, port(1, 9464)?);

    // The recorder first, so that the node's first publication already reaches it.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let mut config = Config::default();
    config.port = node_port;
    match (args.get(2), args.get(3)) {
        (Some(chain), Some(dh)) => {
            config.cert_chain = Some(chain.into());
            config.dh_params = Some(dh.into());
        }
        (None, None) => config.disable_encryption = true,
        _ => return Err("give both CERT_CHAIN and DH_PARAMS, or neither".into()),
    }
    let node = Arc::new(Node::start_inline(config, |node, mut msg| {
        let _ = msg.release();
        drop(node.send(msg));
    })?);

    let http = tiny_http::Server::http(("127.0.0.1", metrics_port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{metrics_port}: {e}"))?;
    let metrics_port = http
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .ok_or("the metrics server has no IP address")?;
    println!("listening on {}", node.port());
    println!("metrics on http://127.0.0.1:{metrics_port}/metrics");

    for request in http.incoming_requests() {
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/metrics") => {
                node.publish_metrics();
                prometheus.run_upkeep();
                let content_type = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                )
                .expect("a valid header");
                tiny_http::Response::from_string(prometheus.render()).with_header(content_type)
            }
            _ => {
                tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
            }
        };
        if let Err(e) = request.respond(response) {
            eprintln!("prometheus example: could not answer a scrape: {e}");
        }
    }
    Ok(())
}
