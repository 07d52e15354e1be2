//! The idle sweep both upstream pools share: a few times per idle period,
//! drop what a pool no longer keeps, even for endpoints that get no more
//! requests, and stop once the pool itself is gone.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Runs `retain` over `conns` a few times per `idle`, on the current
/// runtime, for as long as `conns` lives. Outside a runtime (a pool made in
/// a plain unit test) there is nothing to run it on, and checkouts still
/// skip what has expired.
pub(super) fn spawn<M, R>(conns: &Arc<Mutex<M>>, idle: Duration, retain: R)
where
    M: Send + 'static,
    R: FnMut(&mut M, Instant) + Send + 'static,
{
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(run(Arc::downgrade(conns), idle, retain));
    }
}

async fn run<M, R>(conns: Weak<Mutex<M>>, idle: Duration, mut retain: R)
where
    R: FnMut(&mut M, Instant),
{
    let mut every = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(conns) = conns.upgrade() else { return };
        let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
        retain(&mut conns, Instant::now());
    }
}
