//! A leader's write that the server-side fencing policy refused because the
//! API server's cache still shows the previous holder.
//!
//! The fencing ValidatingAdmissionPolicy reads the pool's Lease from the API
//! server's informer cache, so for a moment after this pod begins to lead its
//! first writes can be refused while the cache catches up. The app must not
//! see that: a write the policy refused while this pod leads is sent again
//! after a short, growing wait, for as long as the pod leads and at most
//! [`BUDGET`]. Any other answer, and every refusal once the pod no longer
//! leads, goes to the app as the API server gave it.
//!
//! Retrying needs the body again, so a gated write of at most
//! [`MAX_RETRIED_BODY`] is read whole before it is forwarded, within the
//! gate's [`BODY_BUDGET`] for all writes together (the agent's container
//! has 64 MiB); a larger one is streamed as it comes and sent once.

use std::time::Duration;

use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tracing::debug;

use super::metrics::{FenceOutcome, GateMetrics};
use super::upstream::{Connector, GateBody, UpBody};
use crate::contract::FENCING_DENIAL_MARKER;
use crate::election::LeaderStatus;

/// The largest write body the gate reads whole (and can retry). Most writes
/// are a few KiB; the API server refuses bodies over 3 MiB by default.
pub const MAX_RETRIED_BODY: usize = 512 << 10;
/// Bytes of write bodies the gate holds at once, all writes together.
pub const BODY_BUDGET: usize = 8 << 20;
/// The largest refusal body read to look for the fencing marker (a
/// `metav1.Status` is well under a kilobyte).
const MAX_REFUSAL_BODY: usize = 64 << 10;
/// The first wait before a retry; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_millis(320);
/// How long after the first refusal retries go on. The cache lag is
/// usually a few milliseconds; a lag this long means something else.
pub const BUDGET: Duration = Duration::from_secs(3);

/// Whether an answer is the fencing policy's refusal.
pub fn is_fencing_refusal(status: StatusCode, body: &[u8]) -> bool {
    let marker = FENCING_DENIAL_MARKER.as_bytes();
    status == StatusCode::FORBIDDEN && body.windows(marker.len()).any(|w| w == marker)
}

/// The waits before each retry, in order, within [`BUDGET`].
pub fn delays() -> impl Iterator<Item = Duration> {
    let mut next = FIRST_DELAY;
    let mut total = Duration::ZERO;
    std::iter::from_fn(move || {
        let delay = next;
        total += delay;
        next = (next * 2).min(MAX_DELAY);
        (total <= BUDGET).then_some(delay)
    })
}

/// A write's head, kept to send the write again.
pub struct Head {
    parts: hyper::http::request::Parts,
}

impl Head {
    pub fn new(req: Request<()>) -> Self {
        Self {
            parts: req.into_parts().0,
        }
    }

    fn with(&self, body: Bytes) -> Request<UpBody> {
        let mut req = Request::new(Either::Right(Full::new(body)));
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        req
    }
}

/// Reads a write's body whole, at most `limit` bytes; the error says why it
/// could not be.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| {
            format!(
                "the write's body could not be read whole: {err} (a write without \
                 Content-Length is read up to {MAX_RETRIED_BODY} bytes; send a larger one with \
                 Content-Length and the gate streams it)"
            )
        })
}

/// How long the gate reads a refused write's body before it answers.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and drops what is left of a request body the gate refuses (at
/// most `limit` bytes, for at most [`DRAIN_TIMEOUT`]): an HTTP/1 client
/// still sending it would otherwise meet a closed connection instead of the
/// answer, and could not tell "refused, try again" from a network failure.
/// Nothing is kept, so the memory budget the refusal protects is not spent.
pub async fn drain(body: Incoming, limit: usize) {
    let mut body = body;
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}

/// Sends a leader's write, again while the fencing policy refuses it and
/// this pod still leads.
pub async fn send(
    client: &Client<Connector, UpBody>,
    head: &Head,
    body: Bytes,
    status: &watch::Receiver<LeaderStatus>,
    metrics: &GateMetrics,
) -> Result<Response<GateBody>, hyper_util::client::legacy::Error> {
    let mut delays = delays();
    let mut retried = false;
    loop {
        let response = client.request(head.with(body.clone())).await?;
        if response.status() != StatusCode::FORBIDDEN {
            if retried {
                metrics.fence(FenceOutcome::Passed);
            }
            return Ok(response.map(Either::Left));
        }
        let (parts, incoming) = response.into_parts();
        let Ok(refusal) = Limited::new(incoming, MAX_REFUSAL_BODY).collect().await else {
            // Not a Status we could read: pass on what we have, the code.
            return Ok(Response::from_parts(parts, Either::Right(Full::default())));
        };
        let refusal = refusal.to_bytes();
        if !is_fencing_refusal(parts.status, &refusal) {
            return Ok(Response::from_parts(
                parts,
                Either::Right(Full::new(refusal)),
            ));
        }
        let leads = status.borrow().leading_at(Instant::now());
        match delays.next() {
            Some(delay) if leads => {
                metrics.fence(FenceOutcome::Retried);
                retried = true;
                debug!(
                    delay_ms = delay.as_millis(),
                    "the fencing policy refused a write of this leader (the API server's cache \
                     still shows the previous holder); sending it again"
                );
                sleep(delay).await;
            }
            _ => {
                metrics.fence(FenceOutcome::Returned);
                return Ok(Response::from_parts(
                    parts,
                    Either::Right(Full::new(refusal)),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fencing_policys_403_is_a_fencing_refusal() {
        let denial = br#"{"kind":"Status","message":"ValidatingAdmissionPolicy 'zen-lead-fencing' with binding 'zen-lead-fencing' denied request: zen-lead fencing: pod w-1 of pool ns/w does not hold the pool's Lease (holder: w-0_ab12cd34); only the leader may write","reason":"Forbidden","code":403}"#;
        assert!(is_fencing_refusal(StatusCode::FORBIDDEN, denial));
        // An RBAC refusal is the app's to see.
        let rbac = br#"{"kind":"Status","message":"configmaps is forbidden: User cannot update","code":403}"#;
        assert!(!is_fencing_refusal(StatusCode::FORBIDDEN, rbac));
        // The marker under another code is not the policy's refusal.
        assert!(!is_fencing_refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            denial
        ));
        assert!(!is_fencing_refusal(StatusCode::FORBIDDEN, b""));
    }

    #[test]
    fn retries_back_off_and_stay_within_the_budget() {
        let all: Vec<Duration> = delays().collect();
        assert_eq!(all[0], FIRST_DELAY);
        assert!(all.windows(2).all(|w| w[1] >= w[0] && w[1] <= MAX_DELAY));
        let total: Duration = all.iter().sum();
        assert!(total <= BUDGET, "{total:?}");
        assert!(total + MAX_DELAY > BUDGET, "the budget is used: {total:?}");
    }
}
