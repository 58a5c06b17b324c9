use crate::support;
use libchirp::Message;
use support::*;

#[test]
fn sync_and_async_echo_round_trip() {
    for sync in [true, false] {
        let echo = echo_node(config(sync));
        let (sender, inbox) = inbox_node(config(sync));
        for i in 0..20u32 {
            let msg = Message::to(v4(&echo), i.to_be_bytes().to_vec());
            let id = msg.identity();
            let sending = sender.send(msg);
            let back = recv(&inbox, "echo");
            assert_eq!(back.identity(), id);
            assert_eq!(back.data(), i.to_be_bytes());
            assert_eq!(back.remote_identity(), echo.identity());
            drop(back); // release: in sync mode the echo's send (and so its release) waits for it
            let sent = sending.wait().expect("send");
            assert_eq!(sent.identity(), id);
        }
        sender.close();
        echo.close();
    }
}
