//! The traffic generator: users placing orders at a steady rate, a share of them with a card
//! that is declined or a query that is slow. It is the shop's "outside world", so it sends no
//! trace context: each request starts a trace at the frontend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// What to send.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Requests per second.
    pub rate: f64,
    /// Share of requests whose payment is declined (0.0–1.0).
    pub fail_ratio: f64,
    /// Share of requests that run the slow query (0.0–1.0).
    pub slow_ratio: f64,
    /// Stop after this many requests (`None`: until stopped).
    pub requests: Option<u64>,
}

/// What happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub sent: u64,
    pub ok: u64,
    /// Answered with an error status (declined payments, …).
    pub failed: u64,
    /// Not answered at all (connection refused, timeout).
    pub unreachable: u64,
}

/// Sends requests to the frontend until `requests` are done or `stop` turns true; waits for
/// the answers of every request it sent.
pub async fn run(
    frontend_url: String,
    config: TrafficConfig,
    mut stop: watch::Receiver<bool>,
) -> TrafficStats {
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a reqwest client");
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let period = Duration::from_secs_f64(1.0 / config.rate.max(0.01));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    loop {
        if config.requests.is_some_and(|n| sent >= n) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        sent += 1;
        let fail = rand::random::<f64>() < config.fail_ratio;
        let slow = rand::random::<f64>() < config.slow_ratio;
        let url = format!("{frontend_url}/checkout?user=user-{}&fail={fail}&slow={slow}", sent % 50);
        let (client, counts) = (client.clone(), counts.clone());
        in_flight.spawn(async move {
            let slot = match client.get(&url).bearer_auth(crate::DEMO_TOKEN).send().await {
                Ok(r) if r.status().is_success() => 0,
                Ok(_) => 1,
                Err(_) => 2,
            };
            counts[slot].fetch_add(1, Ordering::Relaxed);
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    TrafficStats {
        sent,
        ok: counts[0].load(Ordering::Relaxed),
        failed: counts[1].load(Ordering::Relaxed),
        unreachable: counts[2].load(Ordering::Relaxed),
    }
}
