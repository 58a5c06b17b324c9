//! Sends `hello` to an echo node and prints what comes back.
//!
//! `cargo run --example pool_send [ADDR:PORT] [OWN_PORT]` (defaults 127.0.0.1:2998 and 2992).
use std::time::Duration;

use libchirp::{pool::Chirp, Config, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let to = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2998".into())
        .parse()?;
    let mut config = Config::default();
    config.port = std::env::args()
        .nth(2)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(2992);
    config.disable_encryption = true;
    let (tx, rx) = std::sync::mpsc::channel();
    let chirp = Chirp::new(config, move |_, msg| {
        println!("{}", String::from_utf8_lossy(msg.data()));
        tx.send(())?;
        Ok(())
    })?;
    chirp.send(Message::to(to, b"hello")).wait()?;
    rx.recv_timeout(Duration::from_secs(10))?;
    Ok(())
}
