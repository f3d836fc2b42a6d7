//! The per-identity cap on events sent to the sinks. A flooding agent must
//! not drown everyone else's events, but nothing may vanish silently: what
//! the cap holds back in a second is summarised in one `suppressed` event
//! when that second is over. Enforcement never depends on this: the kernel
//! has already decided and acted by the time an event reaches the daemon.

use std::collections::HashMap;

/// One identity's current one-second window.
#[derive(Clone, Copy, Debug)]
struct Window {
    second: u64,
    sent: u32,
    suppressed: u64,
}

/// What the cap says of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Send,
    Suppress,
}

/// A window that closed with events held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub identity_id: u32,
    /// The second (of the caller's clock) the events were held back in.
    pub second: u64,
    pub count: u64,
}

pub struct Throttle {
    per_second: u32,
    windows: HashMap<u32, Window>,
    /// Every event ever held back, for /metrics.
    pub total_suppressed: u64,
}

impl Throttle {
    pub fn new(per_second: u32) -> Throttle {
        Throttle { per_second: per_second.max(1), windows: HashMap::new(), total_suppressed: 0 }
    }

    /// Judges one event of `identity_id` at `second`. A window that this
    /// event closes and that held events back is returned for summarising.
    pub fn admit(&mut self, identity_id: u32, second: u64) -> (Admission, Option<Suppressed>) {
        let window = self.windows.entry(identity_id).or_insert(Window { second, sent: 0, suppressed: 0 });
        let mut closed = None;
        if window.second != second {
            if window.suppressed > 0 {
                closed = Some(Suppressed { identity_id, second: window.second, count: window.suppressed });
            }
            *window = Window { second, sent: 0, suppressed: 0 };
        }
        if window.sent < self.per_second {
            window.sent += 1;
            return (Admission::Send, closed);
        }
        window.suppressed += 1;
        self.total_suppressed += 1;
        (Admission::Suppress, closed)
    }

    /// Windows that ended before `second` and held events back (called once a
    /// second, so a summary does not wait for the identity's next event).
    pub fn closed_before(&mut self, second: u64) -> Vec<Suppressed> {
        let mut closed = Vec::new();
        self.windows.retain(|identity_id, window| {
            if window.second >= second {
                return true;
            }
            if window.suppressed > 0 {
                closed.push(Suppressed { identity_id: *identity_id, second: window.second, count: window.suppressed });
            }
            false
        });
        closed.sort_by_key(|summary| summary.identity_id);
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_back_the_excess_and_summarises_it_once() {
        let mut throttle = Throttle::new(3);
        let admitted: Vec<Admission> = (0..5).map(|_| throttle.admit(7, 100).0).collect();
        assert_eq!(admitted.iter().filter(|a| **a == Admission::Send).count(), 3);
        // Another identity has its own budget.
        assert_eq!(throttle.admit(8, 100).0, Admission::Send);
        // The next second's first event closes the window and reports the two held back.
        let (admission, closed) = throttle.admit(7, 101);
        assert_eq!(admission, Admission::Send);
        assert_eq!(closed, Some(Suppressed { identity_id: 7, second: 100, count: 2 }));
        assert_eq!(throttle.total_suppressed, 2);
        assert!(throttle.closed_before(102).is_empty(), "nothing held back since");
    }

    #[test]
    fn the_tick_reports_a_window_whose_identity_went_quiet() {
        let mut throttle = Throttle::new(1);
        throttle.admit(1, 5);
        throttle.admit(1, 5);
        assert!(throttle.closed_before(5).is_empty(), "the window is still open");
        assert_eq!(throttle.closed_before(6), vec![Suppressed { identity_id: 1, second: 5, count: 1 }]);
        assert!(throttle.closed_before(7).is_empty(), "reported once");
    }
}
