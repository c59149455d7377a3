//! Crash points for the end-to-end tests: `SLUICE_CRASH_AT=NAME:N` makes the process kill
//! itself with SIGKILL the `N`th time (from 1) it reaches the point `NAME`, exactly as a
//! `kill -9` landing there would. Unset (always, outside tests), each point costs one load of
//! a flag that says so.
//!
//! Points: `segment_created` (a segment file exists, its first block not yet written: at
//! start-up and at every rotation); `free_file_headed` (a free file being reused has the new
//! segment's header, durably, and not yet its name).
//!
//! `SLUICE_PAUSE_AT=NAME:MS` makes the task that reaches the pause point `NAME` wait `MS`
//! milliseconds there, every time, so that a test can let other tasks run in a window that is
//! otherwise a few awaits wide. Points: `drop_oldest_counting` (a sink's cursor moved past the
//! segments `drop_oldest` gave up, their records not yet counted).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The point named by `SLUICE_CRASH_AT` and after how many hits it fires.
fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("SLUICE_CRASH_AT").ok()?;
            let (name, n) = v.split_once(':').unwrap_or((&v, "1"));
            Some((name.to_owned(), n.parse().ok()?))
        })
        .as_ref()
}

/// Reaching point `name`: dies here if `SLUICE_CRASH_AT` says so.
pub fn reach(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((armed, n)) = armed() else { return };
    if armed == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
        eprintln!("sluice: SLUICE_CRASH_AT={name}:{n}: killing myself");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// How long to wait at pause point `name`: what `SLUICE_PAUSE_AT` says for it, else `None`.
pub fn pause(name: &str) -> Option<Duration> {
    static ARMED: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    let (armed, wait) = ARMED
        .get_or_init(|| {
            let v = std::env::var("SLUICE_PAUSE_AT").ok()?;
            let (name, ms) = v.split_once(':')?;
            Some((name.to_owned(), Duration::from_millis(ms.parse().ok()?)))
        })
        .as_ref()?;
    (armed == name).then_some(*wait)
}
