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
    // Release after replying, not when handed out: a synchronous sender then learns the
    // message was really handled.
    config.auto_release = false;
    let chirp = Chirp::new(config)?;
    println!("listening on {}", chirp.port());
    for msg in chirp.iter() {
        // The message (and its slot) is dropped — released — once the echo completed.
        if let Err(e) = chirp.send(msg).wait() {
            eprintln!("echo failed: {e}");
        }
    }
    Ok(())
}
