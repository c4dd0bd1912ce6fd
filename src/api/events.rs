//! `GET /api/v1/events`: server-sent events that tell the dashboard when to
//! fetch again, instead of reloading or polling blindly.
//!
//! - `decisions`: a decision was added or changed (at most one event per
//!   [`COALESCE`], however many changed);
//! - `tick`: every [`TICK`], with the server's time, for views that change
//!   with every evaluation (rules).
//!
//! The stream ends when the instance stops, so that open dashboards do not
//! hold up a graceful stop; browsers reconnect by themselves.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::time::{Instant, MissedTickBehavior};

use super::ApiState;
use crate::ingest::now_nanos;

/// The shortest gap between two `decisions` events.
pub const COALESCE: Duration = Duration::from_millis(250);
/// The gap between two `tick` events.
pub const TICK: Duration = Duration::from_secs(2);

struct Feed {
    shutdown: tokio_util::sync::CancellationToken,
    decisions: tokio::sync::watch::Receiver<u64>,
    tick: tokio::time::Interval,
    /// When the last `decisions` event was sent.
    sent: Instant,
}

pub async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        shutdown: state.shutdown.clone(),
        decisions: state.actor.log().subscribe(),
        tick,
        sent: Instant::now() - COALESCE,
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let event = tokio::select! {
            () = feed.shutdown.cancelled() => return None,
            changed = feed.decisions.changed() => {
                if changed.is_err() {
                    return None;
                }
                // Changes that come in a burst (an evaluation firing many
                // instances) make one event.
                tokio::time::sleep_until(feed.sent + COALESCE).await;
                feed.sent = Instant::now();
                let version = *feed.decisions.borrow_and_update();
                Event::default().event("decisions").data(version.to_string())
            }
            _ = feed.tick.tick() => Event::default().event("tick").data(now_nanos().to_string()),
        };
        Some((Ok(event), feed))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
