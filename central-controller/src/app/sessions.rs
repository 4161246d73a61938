//! The sessions part: when each console session was last used, so that a
//! session idle longer than `[console] idle_timeout_secs` ends.
//!
//! A console session is an API token of its own, named `console`, held in
//! a cookie (see `console.rs`); the token's expiry bounds its whole life,
//! this part its idle time, and an idle session's token is revoked.
//! The map lives in memory: after a restart a session's idle time starts
//! over, which never outlasts the token's expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use verge_shared::Timestamp;

use super::types::lock;

/// Sessions remembered at once; past this, the idle ones are forgotten
/// first, and then the oldest.
const MAX_SESSIONS: usize = 65_536;

/// Last use per session (by token id).
#[derive(Debug)]
pub(super) struct Sessions {
    idle_timeout: Duration,
    last_used: Mutex<HashMap<String, Timestamp>>,
}

impl Sessions {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            last_used: Mutex::default(),
        }
    }

    pub(super) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Marks the session used at `now`; `Err(since)` when it had been idle
    /// too long (it is then forgotten, and stays ended).
    pub(super) fn touch(&self, token_id: &str, now: Timestamp) -> Result<(), Timestamp> {
        let mut last_used = lock(&self.last_used);
        if let Some(&since) = last_used.get(token_id)
            && now >= since.saturating_add(self.idle_timeout)
        {
            last_used.remove(token_id);
            return Err(since);
        }
        if last_used.len() >= MAX_SESSIONS && !last_used.contains_key(token_id) {
            let timeout = self.idle_timeout;
            last_used.retain(|_, since| now < since.saturating_add(timeout));
            if last_used.len() >= MAX_SESSIONS
                && let Some(oldest) = last_used
                    .iter()
                    .min_by_key(|(_, since)| **since)
                    .map(|(id, _)| id.clone())
            {
                last_used.remove(&oldest);
            }
        }
        last_used.insert(token_id.to_owned(), now);
        Ok(())
    }

    pub(super) fn forget(&self, token_id: &str) {
        lock(&self.last_used).remove(token_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + secs * 1000)
    }

    #[test]
    fn a_session_used_within_the_timeout_lives_on() {
        let sessions = Sessions::new(Duration::from_secs(60));
        for t in [0, 59, 118, 177] {
            assert_eq!(sessions.touch("a", at(t)), Ok(()), "at {t} s");
        }
    }

    #[test]
    fn an_idle_session_ends_and_stays_ended() {
        let sessions = Sessions::new(Duration::from_secs(60));
        sessions.touch("a", at(0)).expect("fresh");
        assert_eq!(sessions.touch("a", at(60)), Err(at(0)));
        sessions.touch("b", at(0)).expect("fresh");
        sessions.forget("b");
        // A forgotten session starts over: the use case revokes an ended
        // session's token, so it never comes back here.
        assert_eq!(sessions.touch("b", at(600)), Ok(()));
    }
}
