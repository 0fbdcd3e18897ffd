//! Whether the super node at the other end of the link is still there, as plain state.
//!
//! Three rules, each an answer to a different cost of not knowing:
//! - at rest, a keepalive every period the Welcome gave, and the super node is gone after
//!   two periods and 5 s of silence (over UDP nothing else would tell us);
//! - while a call has media, a keepalive every second and gone after 3.5 s of silence: the
//!   call's signals (a hang-up, a new relay leg) reach us only through our super node, and
//!   the media path alone may not show its loss (it need not pass through it);
//! - a check on demand (a call's media went silent): a keepalive at once and again every
//!   300 ms, and gone if nothing authenticated arrives within 1.5 s (a lost datagram or
//!   two is no failover).
//!
//! Inputs are what was heard and `now`; nothing here reads a clock or touches a socket.

use std::time::{Duration, Instant};

/// How long the super node has to answer a check.
pub const CHECK_ANSWER_MAX: Duration = Duration::from_millis(1_500);
/// Between a check's keepalives (five go out before it fails).
pub const CHECK_RESEND: Duration = Duration::from_millis(300);
/// The keepalive period while a call has media.
pub const IN_CALL_KEEPALIVE: Duration = Duration::from_secs(1);
/// Silence after which the super node is gone while a call has media: three keepalives
/// in a row unanswered, so one lost datagram is no failover.
pub const IN_CALL_SILENCE_MAX: Duration = Duration::from_millis(3_500);
/// Added to two keepalive periods for the silence limit at rest.
const AT_REST_SILENCE_EXTRA: Duration = Duration::from_secs(5);

/// Why the super node is taken for gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Gone {
    /// Nothing authenticated arrived for the silence limit.
    #[error("the super node went silent")]
    Silent,
    /// A check went unanswered.
    #[error("the super node did not answer a liveness check")]
    NoAnswer,
}

/// What to do at a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet.
    Wait,
    /// Send a keepalive.
    Keepalive,
    /// The super node is gone: the link ends.
    Gone(Gone),
}

/// The liveness of one link.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// The period the super node's Welcome asked for.
    keepalive: Duration,
    /// When silence started counting: the last authenticated frame, or the switch to the
    /// call pace (a host at rest may have heard nothing for a whole period, which is no
    /// sign of trouble then).
    since: Instant,
    next_keepalive: Instant,
    /// A check in progress: the super node must be heard by then.
    check_by: Option<Instant>,
    in_call: bool,
}

impl Liveness {
    /// A link just established at `now` (its Welcome heard), keepalives every `keepalive`.
    pub fn new(keepalive: Duration, now: Instant) -> Self {
        let keepalive = keepalive.max(Duration::from_secs(1));
        Self { keepalive, since: now, next_keepalive: now + keepalive, check_by: None, in_call: false }
    }

    fn period(&self) -> Duration {
        if self.check_by.is_some() {
            CHECK_RESEND
        } else if self.in_call {
            self.keepalive.min(IN_CALL_KEEPALIVE)
        } else {
            self.keepalive
        }
    }

    /// How long a silence the link tolerates now.
    pub fn silence_max(&self) -> Duration {
        let at_rest = self.keepalive * 2 + AT_REST_SILENCE_EXTRA;
        if self.in_call { at_rest.min(IN_CALL_SILENCE_MAX) } else { at_rest }
    }

    /// An authenticated frame from the super node arrived: it is there, and any check is
    /// answered.
    pub fn heard(&mut self, now: Instant) {
        self.since = self.since.max(now);
        if self.check_by.take().is_some() {
            // Back to the usual pace.
            self.next_keepalive = now + self.period();
        }
    }

    /// A call's media went silent: ask the super node at once. True if a keepalive is to
    /// go out now (false while a check is already in progress).
    pub fn check(&mut self, now: Instant) -> bool {
        if self.check_by.is_some() {
            return false;
        }
        self.check_by = Some(now + CHECK_ANSWER_MAX);
        self.next_keepalive = now + CHECK_RESEND;
        true
    }

    /// Whether the call pace is on.
    pub fn in_call(&self) -> bool {
        self.in_call
    }

    /// Whether a call has media: the call pace, or the pace at rest.
    pub fn set_in_call(&mut self, on: bool, now: Instant) {
        if on == self.in_call {
            return;
        }
        self.in_call = on;
        if on {
            self.since = self.since.max(now);
            self.next_keepalive = self.next_keepalive.min(now);
        }
    }

    /// When [`Liveness::on_wake`] has work next.
    pub fn next_wake(&self) -> Instant {
        let t = self.next_keepalive.min(self.since + self.silence_max());
        self.check_by.map_or(t, |c| c.min(t))
    }

    /// The link's timers at `now`.
    pub fn on_wake(&mut self, now: Instant) -> Verdict {
        if now >= self.since + self.silence_max() {
            return Verdict::Gone(Gone::Silent);
        }
        if self.check_by.is_some_and(|c| now >= c) {
            return Verdict::Gone(Gone::NoAnswer);
        }
        if now >= self.next_keepalive {
            // A late wake-up sends one keepalive, not one per missed period.
            let period = self.period();
            self.next_keepalive = (self.next_keepalive + period).max(now + period / 2);
            return Verdict::Keepalive;
        }
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs the link's timers from `from` to `to` (ms after `t0`) in 10 ms steps, the
    /// super node heard at the times in `heard`; returns the keepalives sent and the
    /// verdict that ended it, if any.
    fn run(l: &mut Liveness, t0: Instant, from: u64, to: u64, heard: &[u64]) -> (Vec<u64>, Option<(u64, Gone)>) {
        let mut sent = Vec::new();
        let mut at = from;
        while at <= to {
            if heard.contains(&at) {
                l.heard(t0 + ms(at));
            }
            match l.on_wake(t0 + ms(at)) {
                Verdict::Keepalive => sent.push(at),
                Verdict::Gone(g) => return (sent, Some((at, g))),
                Verdict::Wait => {}
            }
            at += 10;
        }
        (sent, None)
    }

    #[test]
    fn at_rest_a_silent_super_node_is_gone_after_two_periods_and_five_seconds() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        assert_eq!(l.next_wake(), t0 + Duration::from_secs(15));
        let (sent, gone) = run(&mut l, t0, 0, 40_000, &[]);
        assert_eq!(sent, vec![15_000, 30_000]);
        assert_eq!(gone, Some((35_000, Gone::Silent)));
        // Answered in time, it stays.
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        let (sent, gone) = run(&mut l, t0, 0, 60_000, &[15_010, 30_010, 45_010]);
        assert_eq!((sent, gone), (vec![15_000, 30_000, 45_000, 60_000], None));
    }

    #[test]
    fn in_a_call_the_pace_is_a_second_and_silence_counts_from_the_switch() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        // Nothing heard for 14 s at rest is normal: the switch must not end the link.
        l.set_in_call(true, t0 + ms(14_000));
        assert_eq!(l.next_wake(), t0 + ms(14_000), "a keepalive at once");
        let (sent, gone) = run(&mut l, t0, 14_000, 20_000, &[]);
        assert_eq!(sent, vec![14_000, 15_000, 16_000, 17_000]);
        assert_eq!(gone, Some((17_500, Gone::Silent)), "three keepalives unanswered, then gone");
        // Answers keep it; a lost answer or two is no failover.
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        l.set_in_call(true, t0);
        let (_, gone) = run(&mut l, t0, 0, 10_000, &[10, 1_010, 4_010, 7_010, 8_010]);
        assert_eq!(gone, None);
        // Back at rest, the long limit again.
        l.set_in_call(false, t0 + ms(10_000));
        assert_eq!(l.silence_max(), Duration::from_secs(35));
        assert_eq!(run(&mut l, t0, 10_000, 40_000, &[]).1, None);
        assert_eq!(run(&mut l, t0, 40_000, 50_000, &[]).1, Some((43_010, Gone::Silent)));
    }

    #[test]
    fn a_check_must_be_answered_within_one_and_a_half_seconds_of_three_keepalives() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        assert!(l.check(t0 + ms(2_000)), "a keepalive goes out");
        assert!(!l.check(t0 + ms(2_100)), "one check at a time");
        assert_eq!(l.next_wake(), t0 + ms(2_300));
        assert_eq!(
            run(&mut l, t0, 2_000, 5_000, &[]),
            (vec![2_300, 2_600, 2_900, 3_200], Some((3_500, Gone::NoAnswer)))
        );
        // One answer among them is enough.
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        assert!(l.check(t0 + ms(2_000)));
        assert_eq!(run(&mut l, t0, 2_000, 10_000, &[3_100]), (vec![2_300, 2_600, 2_900], None));
        // Answered: nothing happens, and a later check may go out again.
        let mut l = Liveness::new(Duration::from_secs(15), t0);
        assert!(l.check(t0 + ms(2_000)));
        assert_eq!(run(&mut l, t0, 2_000, 10_000, &[2_020]), (vec![], None));
        assert!(l.check(t0 + ms(10_000)));
    }
}
