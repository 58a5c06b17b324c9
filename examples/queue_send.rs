//! Sends `hello` to an echo node and prints what comes back, on the queue interface.
//!
//! `cargo run --example queue_send [ADDR:PORT] [OWN_PORT]` (defaults 127.0.0.1:2998 and 2992).
use std::time::Duration;

use libchirp::{queue::Chirp, Config, Message};

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
    let chirp = Chirp::new(config)?;
    // Synchronous: the send completes when the echo released our message, which it does
    // after its reply was released by us — so take the reply before waiting for the send.
    let sending = chirp.send(Message::to(to, b"hello"));
    let reply = chirp.recv_timeout(Duration::from_secs(10))?;
    println!("{}", String::from_utf8_lossy(reply.data()));
    sending.wait()?;
    Ok(())
}
