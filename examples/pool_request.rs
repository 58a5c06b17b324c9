//! Sends a request to an echo node and prints the answer.
//!
//! `cargo run --example pool_request [ADDR:PORT] [OWN_PORT]` (defaults 127.0.0.1:2998, 2992).
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
    let chirp = Chirp::new(config, |_, _| Ok(()))?;
    let answer = chirp.request(Message::to(to, b"hello")).wait()?;
    println!("{}", String::from_utf8_lossy(answer.data()));
    Ok(())
}
