//! The log-request task: answers signed log requests from the controller,
//! one at a time, with the tail of a workload's log files.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::logs;
use crate::mqtt::Outgoing;
use crate::report::Signer;
use crate::trust::TrustStore;

/// Answers log requests, one at a time, from the workloads' log files.
pub async fn run(
    config: Config,
    trust: Arc<TrustStore>,
    workloads_dir: PathBuf,
    signer: Arc<Signer>,
    mut requests_rx: mpsc::Receiver<Bytes>,
    outgoing_tx: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = requests_rx.recv() => match next {
                Some(bytes) => bytes,
                None => break,
            },
        };
        let (keys, agent, dir) = (
            trust.controller_keys(),
            config.id.clone(),
            workloads_dir.clone(),
        );
        // File reads: off the runtime thread.
        let answered = tokio::task::spawn_blocking(move || {
            logs::answer(&bytes, &keys, &agent, &dir, verge_shared::Timestamp::now())
        })
        .await;
        match answered {
            Ok(Ok(response)) => {
                debug!(agent = %config.id, service = %response.service, request_id = %response.request_id, n_lines = response.lines.len(), "Answering a log request.");
                let envelope = signer.log_response(response);
                if outgoing_tx.send(Outgoing::LogResponse(envelope)).is_err() {
                    break;
                }
            }
            Ok(Err(reason)) => {
                warn!(agent = %config.id, reason = %reason, "Ignored a log request.");
            }
            Err(e) => warn!(error = %e, "Answering a log request failed."),
        }
    }
}
