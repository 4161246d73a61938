//! A plain MQTT client for tests: publish raw bytes where an attacker or a
//! broken client would, and watch what the controller and agents publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
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
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    pubacks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// The options [`TestClient::connect`] uses: a test may add TLS or a
    /// Last Will and pass them to [`TestClient::connect_with`].
    pub fn options(addr: std::net::SocketAddr, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(5));
        let max = verge_shared::limits::MAX_MQTT_PACKET_BYTES;
        options.set_max_packet_size(max, max);
        options
    }

    /// [`TestClient::connect`] over TLS with `tls` (its client certificate
    /// and the CA it trusts).
    pub async fn connect_tls(
        addr: std::net::SocketAddr,
        client_id: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self> {
        let mut options = Self::options(addr, client_id);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
        Self::connect_with(options).await
    }

    /// Connects to `addr` as `client_id` and waits for the broker's CONNACK.
    pub async fn connect(addr: std::net::SocketAddr, client_id: &str) -> Result<Self> {
        Self::connect_with(Self::options(addr, client_id)).await
    }

    /// Connects with `options` and waits for the broker's CONNACK. Fails with
    /// the connection error if the broker refuses or drops the connection
    /// first (a TLS handshake it rejects, a refused CONNECT).
    pub async fn connect_with(options: MqttOptions) -> Result<Self> {
        let (host, port) = options.broker_address();
        let broker = format!("{host}:{port}");
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (suback_tx, subacks) = mpsc::unbounded_channel();
        let pubacks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&pubacks);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            // Bounded: the loop ends on the first connection error.
            loop {
                let event = match eventloop.poll().await {
                    Ok(event) => event,
                    Err(e) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        break;
                    }
                };
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Event::Incoming(Packet::SubAck(ack)) => {
                        let _ = suback_tx.send(ack.return_codes);
                    }
                    Event::Incoming(Packet::PubAck(_)) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), connected_rx)
            .await
            .map_err(|_| anyhow!("no CONNACK from {broker} within 30 s"))?
            .map_err(|_| anyhow!("the MQTT task for {broker} ended"))?
            .map_err(|e| anyhow!("connecting to {broker}: {e}"))?;
        Ok(Self {
            client,
            incoming,
            subacks,
            pubacks,
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

    /// Publishes `payload` on `topic` with QoS 0 (as agents send
    /// heartbeats), not retained.
    pub async fn publish_at_most_once(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload)
            .await?;
        Ok(())
    }

    /// Publishes `payload` on `topic` with QoS 1 and the retain flag.
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        Ok(())
    }

    /// Subscribes to `filter` at QoS 1 and returns the broker's answer from
    /// its SUBACK (the granted QoS, or a refusal).
    pub async fn subscribe_acked(&mut self, filter: &str) -> Result<SubscribeReasonCode> {
        self.subscribe(filter).await?;
        let codes = tokio::time::timeout(Duration::from_secs(30), self.subacks.recv())
            .await
            .map_err(|_| anyhow!("no SUBACK for {filter} within 30 s"))?
            .ok_or_else(|| anyhow!("MQTT connection closed"))?;
        match codes.as_slice() {
            [code] => Ok(*code),
            other => Err(anyhow!("SUBACK for {filter} has {} codes", other.len())),
        }
    }

    /// How many PUBACKs the broker has sent this client.
    pub fn pubacks(&self) -> usize {
        self.pubacks.load(Ordering::SeqCst)
    }

    /// Whether the connection is still up: it ends on the first error, such
    /// as the broker closing it.
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }

    /// The next message on any topic, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Message> {
        tokio::time::timeout(timeout, self.incoming.recv())
            .await
            .map_err(|_| anyhow!("no message within {timeout:?}"))?
            .ok_or_else(|| anyhow!("MQTT connection closed"))
    }

    /// Closes the network connection without a DISCONNECT, as a crashed
    /// client would, so the broker publishes the client's Last Will.
    pub async fn drop_connection(mut self) {
        self.task.abort();
        // The aborted task has dropped the event loop and its socket once
        // awaiting it returns.
        let _ = (&mut self.task).await;
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
