//! Keeping the context across `tokio::spawn` and `spawn_blocking`.

use std::future::Future;

use opentelemetry::Context;
use opentelemetry::trace::FutureExt as _;
use opentelemetry::trace::WithContext;

/// Extension for futures: run them inside the caller's OpenTelemetry context.
pub trait FutureContextExt: Future + Sized {
    /// Captures the current context now; the future runs with it wherever it is polled.
    fn in_current_context(self) -> WithContext<Self> {
        self.with_context(Context::current())
    }

    /// Runs the future with the given context.
    fn in_context(self, cx: Context) -> WithContext<Self> {
        self.with_context(cx)
    }
}

impl<F: Future> FutureContextExt for F {}

/// `tokio::spawn` that keeps the caller's context: spans made by the task are children of
/// the span that spawned it, in the same trace.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_context())
}

/// `tokio::task::spawn_blocking` that keeps the caller's context.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let cx = Context::current();
    tokio::task::spawn_blocking(move || {
        let _guard = cx.attach();
        f()
    })
}
