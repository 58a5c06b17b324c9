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
    let chirp = Chirp::new(config, |chirp, msg| {
        // Send it back; with auto-release the slot is released when we return.
        chirp.send(msg).wait()?;
        Ok(())
    })?;
    println!("listening on {}", chirp.port());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
