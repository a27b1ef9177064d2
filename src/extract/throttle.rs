//! A token bucket limiting the read rate of one backup, so guests on a busy
//! host are not starved (`[backup] read_rate_limit`).

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

pub struct RateLimiter {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        RateLimiter {
            rate: bytes_per_second,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Wait until `bytes` may be read. Bursts are capped at one second's
    /// worth of tokens.
    pub async fn acquire(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let rate = self.rate as f64;
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
            s.1 = now;
            s.0 -= bytes as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_to_the_rate() {
        let l = RateLimiter::new(1 << 20);
        let t0 = tokio::time::Instant::now();
        for _ in 0..4 {
            l.acquire(1 << 20).await;
        }
        // 4 MiB at 1 MiB/s with an empty bucket: about 4 s.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(3900), "{took:?}");
        let unlimited = RateLimiter::new(0);
        let t1 = tokio::time::Instant::now();
        unlimited.acquire(u64::MAX).await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }
}
