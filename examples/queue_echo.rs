//! Echo node on the queue interface: takes every message from the queue and sends it back.
//!
//! `cargo run --example queue_echo [PORT]` (default 2998; encryption disabled).
use libchirp::{queue::Chirp, Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.port = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(2998);
    config.disable_encryption = true;
    // Auto-release (the default): each message is released when handed out, so waiting
    // for our answer below holds nothing the sender waits for. (Releasing only after the
    // answer completed would make a sender that waits for its send before reading the
    // answer wait on us while we wait on it.)
    let chirp = Chirp::new(config)?;
    println!("listening on {}", chirp.port());
    for msg in chirp.iter() {
        if let Err(e) = chirp.send(msg).wait() {
            eprintln!("echo failed: {e}");
        }
    }
    Ok(())
}
