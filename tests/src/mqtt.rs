//! A plain MQTT client for tests: publish raw bytes where an attacker or a
//! broken client would, and watch what the controller and agents publish.

use std::time::Duration;

use anyhow::{Result, anyhow};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// One received message.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A connected MQTT client whose incoming messages arrive on a channel.
pub struct TestClient {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Connects to `addr` as `client_id` and waits for the broker's CONNACK.
    pub async fn connect(addr: std::net::SocketAddr, client_id: &str) -> Result<Self> {
        Self::connect_with(addr, client_id, None).await
    }

    /// [`TestClient::connect`] over TLS with `tls` (its client certificate
    /// and the CA it trusts).
    pub async fn connect_tls(
        addr: std::net::SocketAddr,
        client_id: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self> {
        Self::connect_with(addr, client_id, Some(tls)).await
    }

    async fn connect_with(
        addr: std::net::SocketAddr,
        client_id: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self> {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        if let Some(tls) = tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
            ));
        }
        options.set_keep_alive(Duration::from_secs(5));
        let max = verge_shared::limits::MAX_MQTT_PACKET_BYTES;
        options.set_max_packet_size(max, max);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            // Bounded: the loop ends on the first connection error.
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), connected_rx)
            .await
            .map_err(|_| anyhow!("no CONNACK from {addr} within 30 s"))??;
        Ok(Self {
            client,
            incoming,
            task,
        })
    }

    pub async fn subscribe(&self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        Ok(())
    }

    /// Publishes `payload` on `topic` with QoS 1, not retained.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    /// The next message on `topic` (others are skipped), within `timeout`.
    pub async fn next_on(&mut self, topic: &str, timeout: Duration) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .map_err(|_| anyhow!("no message on {topic} within {timeout:?}"))?
                .ok_or_else(|| anyhow!("MQTT connection closed"))?;
            if msg.topic == topic {
                return Ok(msg);
            }
        }
    }
}

/// The message the broker keeps retained on `topic`, read by a short-lived
/// client `client_id`.
pub async fn retained(addr: std::net::SocketAddr, client_id: &str, topic: &str) -> Result<Message> {
    let mut client = TestClient::connect(addr, client_id).await?;
    client.subscribe(topic).await?;
    client.next_on(topic, Duration::from_secs(30)).await
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
