//! The controller's probe listener, so that agents measure their
//! round-trip time to the controller as they do to their peers: the same
//! 13-byte UDP protocol and the same answer budget as an agent's listener
//! (both in `verge_shared::latency`). It answers exact probe requests only,
//! with a datagram of the same size, and drops everything else unread
//! beyond the first bytes.

use std::time::Instant;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use verge_shared::latency::{AnswerBudget, PROBE_LEN};

/// Answers probe requests on `socket` until `cancel`.
pub async fn serve(socket: UdpSocket, cancel: CancellationToken) {
    if let Ok(address) = socket.local_addr() {
        info!(address = %address, "The controller answers latency probes.");
    }
    let mut budget = AnswerBudget::new(Instant::now());
    // One byte more than a probe, so that a longer datagram is noticed.
    let mut buf = [0u8; PROBE_LEN + 1];
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    if let Some(answer) = budget.answer(&buf[..n], Instant::now()) {
                        // try_send: a full socket buffer drops the answer, as a loaded network would.
                        let _ = socket.try_send_to(&answer, from);
                    }
                }
                Err(e) => debug!(error = %e, "A probe datagram could not be read."),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use verge_shared::latency::Probe;

    use super::*;

    #[tokio::test]
    async fn answers_a_probe_request_with_its_response() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = socket.local_addr().expect("address");
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve(socket, cancel.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let mut buf = [0u8; 64];
        // What is answered is AnswerBudget's (tested in verge-shared); this
        // checks the wiring: a request comes back as its response.
        client
            .send_to(&Probe::Request { nonce: 42 }.encode(), address)
            .await
            .expect("send");
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("receive");
        assert_eq!(from, address);
        assert_eq!(
            Probe::decode(&buf[..n]),
            Some(Probe::Response { nonce: 42 })
        );
        cancel.cancel();
        served.await.expect("the listener stops on cancel");
    }
}
