//! The log-request part: requests waiting for an agent's answer, by request id.
//!
//! Nothing is stored: an answer that comes after its request stopped
//! waiting finds no waiter and is dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::oneshot;
use verge_shared::logs::LogResponse;

use super::types::lock;

/// Requests waiting for their answer, by request id.
#[derive(Default)]
pub(super) struct Pending {
    waiting: Mutex<BTreeMap<String, oneshot::Sender<LogResponse>>>,
}

impl Pending {
    /// Registers a request; its answer arrives on the receiver. The waiter
    /// is removed when the returned guard drops, however the wait ends
    /// (answer, timeout, or the HTTP client going away).
    pub(super) fn wait_for(&self, id: String) -> (Waiter<'_>, oneshot::Receiver<LogResponse>) {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), tx);
        (Waiter { pending: self, id }, rx)
    }

    /// Hands `response` to the request waiting for it; false when none is.
    pub(super) fn answer(&self, response: LogResponse) -> bool {
        let waiter = lock(&self.waiting).remove(&response.request_id);
        waiter.is_some_and(|tx| tx.send(response).is_ok())
    }
}

/// Removes a request's waiter when dropped.
pub(super) struct Waiter<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        lock(&self.pending.waiting).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use verge_shared::logs::LogStream;
    use verge_shared::{AgentId, ServiceName};

    use super::*;

    fn response(id: &str) -> LogResponse {
        LogResponse {
            schema_version: verge_shared::messages::SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("an id"),
            request_id: id.into(),
            service: ServiceName::new("web").expect("a name"),
            stream: LogStream::Stdout,
            lines: vec!["hello".into()],
            truncated: false,
            error: None,
        }
    }

    #[test]
    fn an_answer_reaches_its_waiter_and_a_late_one_finds_none() {
        let pending = Pending::default();
        let (waiter, mut rx) = pending.wait_for("a".into());
        assert!(!pending.answer(response("b")), "no one waits for b");
        assert!(pending.answer(response("a")));
        assert_eq!(rx.try_recv().expect("answered").lines, ["hello"]);
        drop(waiter);
        assert!(!pending.answer(response("a")), "the waiter is gone");
    }

    #[test]
    fn a_dropped_guard_removes_the_waiter() {
        let pending = Pending::default();
        let (waiter, _rx) = pending.wait_for("a".into());
        drop(waiter);
        assert!(lock(&pending.waiting).is_empty());
    }
}
