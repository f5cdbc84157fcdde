//! Instants as `CLOCK_MONOTONIC` nanoseconds, so leadership records of
//! different processes on one host can be compared (the chaos test's checker
//! and `lock`'s guard rely on this). `std::time::Instant` is that clock on
//! Linux, but opaque; one paired reading at start-up maps between the two.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::time::{ClockId, clock_gettime};
use tokio::time::Instant;

fn base() -> &'static (Instant, u128) {
    static BASE: OnceLock<(Instant, u128)> = OnceLock::new();
    BASE.get_or_init(|| {
        // Bracket the instant between two kernel readings: the pairing error
        // is half their distance (microseconds).
        let before = now_mono_ns();
        let instant = Instant::now();
        let after = now_mono_ns();
        (instant, before + (after - before) / 2)
    })
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_mono_ns() -> u128 {
    let ts = clock_gettime(ClockId::Monotonic);
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

/// `instant` on the `CLOCK_MONOTONIC` scale, in nanoseconds.
pub fn mono_ns(instant: Instant) -> u128 {
    let (base_instant, base_ns) = *base();
    if instant >= base_instant {
        base_ns + (instant - base_instant).as_nanos()
    } else {
        base_ns.saturating_sub((base_instant - instant).as_nanos())
    }
}

/// The tokio instant for a `CLOCK_MONOTONIC` reading.
pub fn instant_from_mono_ns(ns: u128) -> Instant {
    let (base_instant, base_ns) = *base();
    let nanos = |d: u128| Duration::from_nanos(u64::try_from(d).unwrap_or(u64::MAX));
    if ns >= base_ns {
        base_instant + nanos(ns - base_ns)
    } else {
        base_instant
            .checked_sub(nanos(base_ns - ns))
            .unwrap_or(base_instant)
    }
}

/// Wall clock now, in nanoseconds since the Unix epoch (for humans and for
/// comparing with tools that only report wall time).
pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Initialises the mapping; call early so later readings need no setup.
pub fn init() {
    let _ = base();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_round_trips_and_tracks_the_kernel_clock() {
        init();
        let now = Instant::now();
        let mapped = mono_ns(now);
        let kernel = now_mono_ns();
        assert!(kernel.abs_diff(mapped) < 50_000_000, "{kernel} vs {mapped}");
        let back = instant_from_mono_ns(mapped);
        let diff = if back > now { back - now } else { now - back };
        assert!(diff < Duration::from_micros(10), "{diff:?}");
    }
}
