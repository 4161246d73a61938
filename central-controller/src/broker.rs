//! The embedded MQTT broker (rumqttd) on its own OS thread.
//!
//! `Broker::start()` blocks forever and has no stop API, so the thread lives
//! as long as the process. Nothing else relies on this broker: the controller
//! talks to it over TCP exactly as it would to an external one.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::error;
use verge_shared::limits;

/// How long the broker may take to accept TCP connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the embedded MQTT broker stopped while starting on {0} (is the address in use?)")]
    Died(SocketAddr),
    #[error("the embedded MQTT broker did not accept connections on {0} within {1:?}")]
    NotReady(SocketAddr, Duration),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

fn broker_config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: limits::MAX_MQTT_PACKET_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "verge-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

/// Starts the broker on `listen` and waits until it accepts TCP connections.
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    let config = broker_config(listen);
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = Broker::new(config).start() {
                error!(address = %listen, error = %e, "The embedded MQTT broker stopped.");
            }
        })
        .map_err(BrokerError::Thread)?;
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if thread.is_finished() {
            return Err(BrokerError::Died(listen));
        }
        if Instant::now() > deadline {
            return Err(BrokerError::NotReady(listen, READY_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
