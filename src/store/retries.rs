//! Counting object-store retries, for the run summary.
//!
//! object_store logs every retry as an `info` event of target
//! `object_store::client::retry` before it backs off; a tracing layer counts
//! those events. The binary installs the layer ([`layer`]); a library user
//! who does not install it reads zero.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;

static RETRIES: AtomicU64 = AtomicU64::new(0);

/// Retries of object-store requests so far in this process.
pub fn count() -> u64 {
    RETRIES.load(Ordering::Relaxed)
}

/// Counts a retry croco makes itself, of a request object_store does not
/// retry (the run lock's conditional create), so the summary counts it too.
pub fn record() {
    RETRIES.fetch_add(1, Ordering::Relaxed);
}

/// Counts events, whatever their level filter elsewhere.
pub struct RetryCounter;

impl<S: Subscriber> Layer<S> for RetryCounter {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        RETRIES.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counting layer, filtered to object_store's retry events only (so the
/// log level of the other layers does not hide them from it).
pub fn layer<S: Subscriber>() -> Filtered<RetryCounter, FilterFn, S> {
    RetryCounter.with_filter(FilterFn::new(|meta| meta.target().starts_with("object_store::client::retry")))
}
