//! A periodic timer that stops with a cancellation token: the shape of the
//! agent's timed loops (heartbeat, telemetry, health checks).

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks every period, the first at once; a tick missed while the loop was
/// busy is delayed, not bunched up with the next.
pub struct Ticks {
    interval: Interval,
}

impl Ticks {
    pub fn every(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval }
    }

    /// Waits for the next tick: true when it came, false once `stop` is
    /// cancelled (which wins over a tick that is due too).
    pub async fn next(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            () = stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn ticks_come_once_per_period_the_first_at_once_until_stopped() {
        let stop = CancellationToken::new();
        let mut ticks = Ticks::every(Duration::from_secs(5));
        let began = Instant::now();
        assert!(ticks.next(&stop).await);
        assert_eq!(began.elapsed(), Duration::ZERO);
        assert!(ticks.next(&stop).await);
        assert_eq!(began.elapsed(), Duration::from_secs(5));
        // Busy past two periods: the late tick comes at once, the next a
        // whole period after it.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(ticks.next(&stop).await);
        assert_eq!(began.elapsed(), Duration::from_secs(17));
        assert!(ticks.next(&stop).await);
        assert_eq!(began.elapsed(), Duration::from_secs(22));
        stop.cancel();
        assert!(!ticks.next(&stop).await);
    }
}
