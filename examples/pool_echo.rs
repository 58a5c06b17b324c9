//! Echo node on the pool interface: sends every message back to its sender.
//!
//! `cargo run --example pool_echo [PORT]` (default 2998; encryption disabled).
use libchirp::{pool::Chirp, Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.port = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(2998);
    config.disable_encryption = true;
    // We release each request ourselves, before waiting for our answer: a synchronous
    // sender that waits for its send before reading the answer would otherwise wait on us
    // while we wait on it (see the crate docs, "what a handler may do").
    config.auto_release = false;
    let chirp = Chirp::new(config, |chirp, mut msg| {
        let _ = msg.release();
        chirp.send(msg).wait()?;
        Ok(())
    })?;
    println!("listening on {}", chirp.port());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
