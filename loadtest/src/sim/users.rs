//! Users: a diurnal cycle of logins (the online share follows a sinusoid over 24 hours),
//! exponential sessions, a login at a random live super node, a presence refresh every
//! `presence_refresh_secs` while online, and lookups of users seen within the retention.
//!
//! Offline users log in as a Poisson process whose rate keeps the online share on the
//! curve: with sessions of mean S, a share p online is stationary when offline users log
//! in at p / ((1 − p)·S). The rate varies with the hour, so the next login is drawn by
//! thinning (draw at the peak rate, keep with probability rate(t)/peak).

use super::rng::exp_median;
use rand::RngExt;
use rand::rngs::StdRng;
use serde::Serialize;

const HOUR_MS: f64 = 3_600_000.0;

/// The user model's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    /// Mean share of users online.
    pub online_mean: f64,
    /// Amplitude of the daily swing around it.
    pub online_swing: f64,
    /// Hour of the day the run starts at (the peak is at 18:00).
    pub start_hour: f64,
    /// Median session, minutes.
    pub session_minutes: f64,
    /// Presence refresh while online, seconds (`host.presence_refresh_secs`).
    pub refresh_secs: u64,
    /// Lookups per online user per hour.
    pub lookups_per_hour: f64,
    /// Share of lookups for names nobody has.
    pub missing_share: f64,
    /// How long an offline user stays findable, hours (the index's retention).
    pub retention_hours: f64,
    /// Median delay before a user whose super node died logs in again, seconds.
    pub reconnect_secs: f64,
    /// Share of users with a second device: each device logs in and out on its own, at
    /// its own super node, with its own entry (session) under the user's key.
    pub second_device_share: f64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            online_mean: 0.2,
            online_swing: 0.1,
            start_hour: 12.0,
            session_minutes: 60.0,
            refresh_secs: 300,
            lookups_per_hour: 2.0,
            missing_share: 0.01,
            retention_hours: 72.0,
            reconnect_secs: 10.0,
            second_device_share: 0.3,
        }
    }
}

impl Model {
    /// Share of users online at `t` ms after the start.
    pub fn online_share(&self, t: u64) -> f64 {
        let hour = self.start_hour + t as f64 / HOUR_MS;
        let phase = (hour - 12.0) / 24.0 * std::f64::consts::TAU;
        (self.online_mean + self.online_swing * phase.sin()).clamp(0.001, 0.999)
    }

    fn mean_session_ms(&self) -> f64 {
        self.session_minutes * 60_000.0 / std::f64::consts::LN_2
    }

    fn login_rate(&self, t: u64) -> f64 {
        let p = self.online_share(t);
        p / ((1.0 - p) * self.mean_session_ms())
    }

    /// A session's length, ms.
    pub fn session(&self, rng: &mut StdRng) -> u64 {
        (exp_median(rng, self.session_minutes) * 60_000.0) as u64
    }

    /// When a user offline since `now` logs in next.
    pub fn next_login(&self, rng: &mut StdRng, now: u64) -> u64 {
        let p = (self.online_mean + self.online_swing).clamp(0.001, 0.999);
        let peak = p / ((1.0 - p) * self.mean_session_ms());
        let mut t = now as f64;
        // Bounded: each round is kept with probability ≥ trough/peak.
        for _ in 0..10_000 {
            t += -rng.random_range(f64::MIN_POSITIVE..1.0f64).ln() / peak;
            if rng.random_bool((self.login_rate(t as u64) / peak).min(1.0)) {
                break;
            }
        }
        t as u64
    }

    /// How long ago an offline user was last seen, at the start (the offline spell so
    /// far, by the same memoryless law; capped far past the retention).
    pub fn offline_age(&self, rng: &mut StdRng) -> u64 {
        let mean = 1.0 / self.login_rate(0);
        ((-rng.random_range(f64::MIN_POSITIVE..1.0f64).ln() * mean) as u64).min(30 * 24 * 3_600_000)
    }

    /// The delay before a user whose super node died logs in again.
    pub fn reconnect(&self, rng: &mut StdRng) -> u64 {
        (exp_median(rng, self.reconnect_secs) * 1000.0) as u64
    }

    /// The retention, ms.
    pub fn retention_ms(&self) -> u64 {
        (self.retention_hours * HOUR_MS) as u64
    }

    /// Devices of `users` users: one each, and a second for the first share of them.
    pub fn devices(&self, users: u32) -> u32 {
        users + (f64::from(users) * self.second_device_share.clamp(0.0, 1.0)).round() as u32
    }
}

/// The user and device number (0: the first) of device `d` among `users` users' devices
/// (the first `users` are each user's first; then the second devices of users 0, 1, …).
pub fn owner(d: u32, users: u32) -> (u32, u32) {
    if d < users { (d, 0) } else { (d - users, 1) }
}

/// The devices of user `u` among `devices` devices of `users` users ([`owner`]'s inverse).
pub fn devices_of(u: u32, users: u32, devices: u32) -> impl Iterator<Item = u32> {
    // A name parsed from a key can be any number: no user past `users`.
    [u, users.saturating_add(u)].into_iter().filter(move |d| u < users && *d < devices)
}

/// No super node.
pub const NONE: u32 = u32::MAX;

/// One user.
#[derive(Debug, Clone, Copy)]
pub struct User {
    /// The super node it is logged in at, or [`NONE`].
    pub sn: u32,
    /// Its place in that super node's list of users.
    pub at: u32,
    /// Its place in the online list, or [`NONE`].
    pub online_at: u32,
    /// Grows with every session: a refresh or logout of an older session is stale.
    pub session: u32,
    /// When it was last seen (ms; negative: before the start).
    pub last_seen: i64,
}

/// Every device, who is online, and who is logged in where (a device is what logs in:
/// the model's "user" below is a device; [`owner`] names its user).
pub struct Users {
    /// All devices by index; [`owner`] gives each one's user, whose name is `u{i}`.
    pub all: Vec<User>,
    /// Online users, in no particular order (for a random pick).
    pub online: Vec<u32>,
    /// Users logged in at each super node.
    pub at_sn: Vec<Vec<u32>>,
}

impl Users {
    /// `m` users, all offline, last seen at `last_seen[i]`.
    pub fn new(last_seen: Vec<i64>) -> Self {
        let all = last_seen
            .into_iter()
            .map(|l| User { sn: NONE, at: 0, online_at: NONE, session: 0, last_seen: l })
            .collect();
        Self { all, online: Vec::new(), at_sn: Vec::new() }
    }

    /// Logs user `u` in at super node `sn` (a new session if it was offline, else a move
    /// within its session); returns the session number.
    pub fn login(&mut self, u: u32, sn: u32) -> u32 {
        self.detach(u);
        if self.at_sn.len() <= sn as usize {
            self.at_sn.resize_with(sn as usize + 1, Vec::new);
        }
        let list = &mut self.at_sn[sn as usize];
        let user = &mut self.all[u as usize];
        user.sn = sn;
        user.at = list.len() as u32;
        list.push(u);
        if user.online_at == NONE {
            user.online_at = self.online.len() as u32;
            self.online.push(u);
            user.session += 1;
        }
        user.session
    }

    /// Takes user `u` off its super node (it stays online).
    pub fn detach(&mut self, u: u32) {
        let User { sn, at, .. } = self.all[u as usize];
        if sn == NONE {
            return;
        }
        let list = &mut self.at_sn[sn as usize];
        list.swap_remove(at as usize);
        if let Some(&moved) = list.get(at as usize) {
            self.all[moved as usize].at = at;
        }
        self.all[u as usize].sn = NONE;
    }

    /// Logs user `u` out at `now`.
    pub fn logout(&mut self, u: u32, now: u64) {
        self.detach(u);
        let at = self.all[u as usize].online_at;
        if at != NONE {
            self.online.swap_remove(at as usize);
            if let Some(&moved) = self.online.get(at as usize) {
                self.all[moved as usize].online_at = at;
            }
        }
        let user = &mut self.all[u as usize];
        user.online_at = NONE;
        user.session += 1;
        user.last_seen = now as i64;
    }

    /// Takes every user off super node `sn`, returning them.
    pub fn evict(&mut self, sn: u32) -> Vec<u32> {
        let Some(list) = self.at_sn.get_mut(sn as usize) else { return Vec::new() };
        let users = std::mem::take(list);
        for u in &users {
            self.all[*u as usize].sn = NONE;
        }
        users
    }

    /// Whether user `u` is online.
    pub fn is_online(&self, u: u32) -> bool {
        self.all[u as usize].online_at != NONE
    }
}

/// A user's name in the index.
pub fn name(u: u32) -> String {
    format!("u{u}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::stream;

    #[test]
    fn devices_of_is_owners_inverse() {
        let (users, devices) = (10, Model { second_device_share: 0.3, ..Model::default() }.devices(10));
        assert_eq!(devices, 13);
        for d in 0..devices {
            let (u, _) = owner(d, users);
            assert!(devices_of(u, users, devices).any(|x| x == d), "device {d} of user {u}");
        }
        assert_eq!(devices_of(2, users, devices).collect::<Vec<_>>(), [2, 12]);
        assert_eq!(devices_of(5, users, devices).collect::<Vec<_>>(), [5]);
        assert_eq!(devices_of(10, users, devices).count(), 0, "no such user");
        assert_eq!(devices_of(u32::MAX, users, devices).count(), 0, "a name past every user");
    }

    #[test]
    fn lists_follow_logins_moves_and_logouts() {
        let mut us = Users::new(vec![-5; 4]);
        us.login(0, 1);
        us.login(1, 1);
        us.login(2, 0);
        assert_eq!((us.online.len(), us.at_sn[1].len()), (3, 2));
        us.login(0, 0);
        assert_eq!((us.at_sn[0].len(), us.at_sn[1].clone()), (2, vec![1]), "moved");
        us.logout(1, 40);
        assert!(!us.is_online(1) && us.all[1].last_seen == 40 && us.at_sn[1].is_empty());
        let evicted = us.evict(0);
        assert_eq!(evicted.len(), 2);
        assert!(us.all.iter().all(|u| u.sn == NONE));
        for (i, &u) in us.online.iter().enumerate() {
            assert_eq!(us.all[u as usize].online_at as usize, i);
        }
    }

    #[test]
    fn logins_keep_the_online_share_on_the_curve() {
        // A thousand users over two simulated days: the share online at each hour follows
        // the sinusoid within a few points.
        let m = Model::default();
        let mut r = stream(9, "users");
        let n = 2000;
        let horizon = 48 * 3_600_000u64;
        let mut online_at_hour = [0u32; 48];
        for _ in 0..n {
            let mut t = if r.random_bool(m.online_share(0)) { 0 } else { m.next_login(&mut r, 0) };
            while t < horizon {
                let end = t + m.session(&mut r);
                for (h, c) in online_at_hour.iter_mut().enumerate() {
                    let at = h as u64 * 3_600_000;
                    if (t..end).contains(&at) {
                        *c += 1;
                    }
                }
                t = m.next_login(&mut r, end);
            }
        }
        for (h, c) in online_at_hour.iter().enumerate().skip(4) {
            let share = f64::from(*c) / n as f64;
            let want = m.online_share(h as u64 * 3_600_000);
            assert!((share - want).abs() < 0.05, "hour {h}: {share} online, the curve says {want}");
        }
    }
}
