//! One request's panic must not take the process down: the controller
//! binary serves the webhook beside the reconcilers, and a crash of one is a
//! crash of both; an agent that dies makes a `process` leader's `zen-lead
//! run` stop the app.
//!
//! The release profile therefore unwinds (Cargo.toml says why both binaries
//! share that), but only a request's own future is unwound and answered
//! with a 500: [`contain`] marks its polls, and the hook [`install`] sets
//! aborts on any other panic, as `panic = "abort"` did. A reconciler, a
//! watch task or the election that panics still ends the process (the
//! kubelet restarts it) instead of leaving it running without that task.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// Polls of contained futures in progress on this thread.
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

/// Makes every panic outside [`contain`] abort the process, after the
/// default hook printed it. Binaries call it once at start; tests do not.
/// Debug builds keep unwinding there, as they did under `panic = "abort"`
/// in release only (a controller task's panic is then its JoinError).
pub fn install() {
    if cfg!(debug_assertions) {
        return;
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if CONTAINED.with(Cell::get) == 0 {
            std::process::abort();
        }
    }));
}

/// A request's future panicked; the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an internal error (a panic: {0}) ended this request; the process serves on, see its log")]
pub struct Panicked(pub String);

/// `fut`, with a panic in any of its polls turned into [`Panicked`].
pub fn contain<F: Future>(fut: F) -> Contained<F> {
    Contained {
        inner: Some(Box::pin(fut)),
    }
}

/// The future [`contain`] returns.
pub struct Contained<F> {
    /// `None` once it panicked: a future that panicked is never polled again.
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Panicked("polled again after a panic".to_owned())));
        };
        CONTAINED.with(|n| n.set(n.get() + 1));
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        CONTAINED.with(|n| n.set(n.get().saturating_sub(1)));
        match polled {
            Ok(poll) => poll.map(Ok),
            Err(payload) => {
                this.inner = None;
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                Poll::Ready(Err(Panicked(message)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_contained_future_is_an_error_and_others_run_on() {
        let panics = contain(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("boom {}", 7);
            }
            1
        });
        assert_eq!(panics.await, Err(Panicked("boom 7".to_owned())));
        assert_eq!(contain(async { 2 }).await, Ok(2));
        assert_eq!(CONTAINED.with(Cell::get), 0, "the count is back to zero");
    }
}
