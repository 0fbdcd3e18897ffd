//! The simulated world: super nodes, their membership and views, users, the network,
//! the scenarios, and the index hooks, driven by one event queue.

use super::churn::{self, Next};
use super::clock::{Ms, Queue};
use super::index::{Index, Out, Outbox, Publish, Sn};
use super::membership::{Action, Cluster};
use super::net::{Class, Net, Traffic};
use super::rng;
use super::sampled::Sampled;
use super::stats::Stats;
use super::users::{self, Users};
use super::view::{View, Views};
use super::{Config, Mode, Scenario};
use confab::cluster::Member;
use confab::index::{NodeId, SlotSpace};
use rand::RngExt;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Something due at a moment of virtual time.
pub enum Ev<M, T> {
    /// A gossip packet reaches slot `to` of cluster `cluster` (0: the super nodes in full
    /// mode, 1: the calibration sample).
    Gossip { cluster: u8, to: u32, data: Vec<u8> },
    /// A foca timer.
    FocaTimer { cluster: u8, slot: u32, inc: u32, timer: Box<foca::Timer<Member>> },
    /// Super node `sn`'s session `inc` ends (churn): for good, or for a while.
    SnEnd { sn: Sn, inc: u32, next: Next },
    /// Super node `sn` starts a session.
    SnUp { sn: Sn },
    /// A new super node joins in place of a dead one.
    Replace,
    /// A sampled group takes in a membership change (sampled mode).
    GroupApply { group: u32, change: u32 },
    /// A membership change's last groups take it in (sampled mode).
    ChangeDone { change: u32 },
    /// User `u` logs in (if still offline in `session`).
    Login { u: u32, session: u32 },
    /// User `u`, online, logs in again after its super node died.
    Reconnect { u: u32, session: u32 },
    /// User `u` refreshes its presence.
    Refresh { u: u32, session: u32 },
    /// User `u` logs out.
    Logout { u: u32, session: u32 },
    /// The next lookup (`real`), or a moment to draw the next gap again.
    Lookup { real: bool },
    /// The scenario strikes.
    Scenario,
    /// The partition heals.
    Heal,
    /// An index RPC reaches `to` (boxed, as the foca timer: the queue moves its
    /// entries on every push and pop, and they are kept small).
    IndexMsg { to: Sn, inc: u32, from: NodeId, msg: Box<M> },
    /// An index timer of `node`.
    IndexTimer { node: Sn, inc: u32, timer: T },
    /// The directory answers lookup `id` of `node`.
    Directory { node: Sn, inc: u32, id: u64, seen: Option<i64> },
    /// Once a second: progress and samples.
    Tick,
}

/// One super node of the simulation.
pub struct SuperNode {
    /// Its index identity.
    pub id: NodeId,
    /// Whether it is up.
    pub up: bool,
    /// Its session number.
    pub inc: u32,
    /// Its kind and life.
    pub life: churn::Life,
    /// What it believes alive (itself included).
    pub view: Arc<View>,
    /// When its current session started, and when it last changed state.
    pub since: Ms,
    /// Time up within the measured window.
    pub up_ms: Ms,
    /// Index bytes it sent and received.
    pub traffic: Traffic,
}

/// A lookup in flight.
struct Pending {
    at: Ms,
    exists: bool,
}

/// The whole simulation.
pub struct World<I: Index> {
    /// The run's settings.
    pub cfg: Config,
    /// Virtual time.
    pub q: Queue<Ev<I::Msg, I::Timer>>,
    /// The network.
    pub net: Net,
    /// Every super node ever started.
    pub sns: Vec<SuperNode>,
    by_id: BTreeMap<NodeId, Sn>,
    live: Vec<Sn>,
    live_at: Vec<u32>,
    /// Foca for every super node (full mode) or for the calibration sample.
    pub foca: Cluster,
    /// The sampled mode's groups (None in full mode).
    pub sampled: Option<Sampled>,
    /// Shared views.
    pub views: Views,
    /// The users.
    pub users: Users,
    /// The index.
    pub index: I,
    lookups: BTreeMap<(Sn, u64), Pending>,
    rng_churn: StdRng,
    rng_users: StdRng,
    rng_misc: StdRng,
    /// When measuring starts (the end of the warm-up).
    pub start: Ms,
    /// When the run ends.
    pub end: Ms,
    /// Everything counted and measured.
    pub stats: Stats,
    /// Events handled.
    pub events: u64,
    /// When the last membership change happened (truth), for convergence checks.
    pub last_change: Ms,
}

/// The partition's two sides: by the parity of the slot in a network address.
fn side(a: u64) -> u8 {
    (a & 1) as u8
}

impl<I: Index> World<I> {
    /// A world for `cfg` with `index`, super nodes started, users placed, nothing run yet.
    pub fn new(cfg: Config, index: I) -> Self {
        let seed = cfg.seed;
        let space = SlotSpace::new(cfg.slots).expect("valid slot count");
        let n = cfg.supernodes;
        let full = cfg.mode() == Mode::Full;
        let foca = if full {
            Cluster::new(0, Ipv4Addr::new(198, 18, 0, 1), seed, n)
        } else {
            Cluster::new(1, Ipv4Addr::new(198, 19, 0, 1), seed, cfg.sample)
        };
        // Known once the cluster has formed; until then the latest it can be.
        let start = cfg.warmup_secs * 1000;
        let end = start + (cfg.hours * 3_600_000.0) as Ms;
        let mut w = Self {
            q: Queue::default(),
            net: Net::new(seed, cfg.latency_min_ms, cfg.latency_max_ms, cfg.loss),
            sns: Vec::new(),
            by_id: BTreeMap::new(),
            live: Vec::new(),
            live_at: Vec::new(),
            foca,
            sampled: None,
            views: Views::new(space, cfg.replicas),
            users: Users::new(Vec::new()),
            index,
            lookups: BTreeMap::new(),
            rng_churn: rng::stream(seed, "churn"),
            rng_users: rng::stream(seed, "users"),
            rng_misc: rng::stream(seed, "misc"),
            start,
            end,
            stats: Stats::new(),
            events: 0,
            last_change: 0,
            cfg,
        };
        w.populate();
        w
    }

    /// Whether the run simulates every super node's foca.
    pub fn full(&self) -> bool {
        self.cfg.mode() == Mode::Full
    }

    fn populate(&mut self) {
        let n = self.cfg.supernodes;
        let churn = self.cfg.churn.clone();
        // Multi-session nodes spend part of their life down: that many more exist, down
        // at the start, so the cluster keeps about N up.
        let multi = f64::from(n) * (1.0 - churn.single_share);
        let resting = (multi * (1.0 / churn.multi_up_share() - 1.0)).round() as u32;
        for _ in 0..n + resting {
            let life = churn.life(&mut self.rng_churn, 0);
            self.add_sn(life);
        }
        if self.full() {
            // Nodes join one after another through a random earlier one over the first
            // half of the warm-up, as a cluster that forms.
            let spread = self.formation_ms();
            for sn in 0..n {
                self.q.at(u64::from(sn) * spread / u64::from(n), Ev::SnUp { sn });
            }
        } else {
            // A few sample slots start down, so that the first real joins have a sample
            // node to mirror them.
            let k = self.cfg.sample;
            let spare = (k / 50).max(1);
            for i in 0..k {
                self.foca.add();
                if !i.is_multiple_of(k / spare) {
                    self.q.at(u64::from(i) * self.formation_ms() / u64::from(k), Ev::SnUp { sn: u32::MAX - i });
                }
            }
            let ids: Vec<NodeId> = self.sns[..n as usize].iter().map(|s| s.id).collect();
            let truth = self.views.of(&ids);
            let spare_slot = move |i: u32| i.is_multiple_of(k / spare);
            self.sampled = Some(Sampled::new(k, &self.foca, truth, self.cfg.sample_scale(), spare_slot));
            for sn in 0..n {
                self.sn_start(sn);
            }
        }
        for sn in n..n + resting {
            self.sns[sn as usize].life.single = false;
        }
        self.q.at(0, Ev::Tick);
    }

    /// Over how long the first nodes join: a cluster that forms, not one that appears.
    fn formation_ms(&self) -> Ms {
        (self.cfg.warmup_secs * 1000 / 4).clamp(1, 60_000)
    }

    /// Whether the cluster has formed: every foca node knows every other.
    fn formed(&self) -> bool {
        if self.full() { self.converged() } else { self.foca.converged() }
    }

    fn add_sn(&mut self, life: churn::Life) -> Sn {
        let sn = self.sns.len() as Sn;
        let id = super::membership::node_id(self.cfg.seed, 0, sn);
        let view = self.views.of(&[id]);
        self.sns.push(SuperNode { id, up: false, inc: 0, life, view, since: 0, up_ms: 0, traffic: Traffic::default() });
        self.live_at.push(u32::MAX);
        self.by_id.insert(id, sn);
        if self.full() && self.foca.slots.len() < self.sns.len() {
            self.foca.add();
        }
        sn
    }

    /// Users at the start: those online are placed at random live super nodes when the
    /// measurement starts; the others were last seen some time before (the warm start).
    fn place_users(&mut self) {
        let m = &self.cfg.user_model;
        let p0 = m.online_share(0);
        let devices = m.devices(self.cfg.users);
        let mut last_seen = Vec::with_capacity(devices as usize);
        let mut online = Vec::new();
        for u in 0..devices {
            if self.rng_users.random_bool(p0) {
                online.push(u);
                last_seen.push(0);
            } else {
                last_seen.push(-(m.offline_age(&mut self.rng_users) as i64));
            }
        }
        self.users = Users::new(last_seen);
        for u in 0..devices {
            if !online.contains_sorted(u) {
                let at = self.start + m.next_login(&mut self.rng_users, 0);
                self.q.at(at, Ev::Login { u, session: 0 });
            }
        }
        self.stats.warm_online = online.len() as u64;
        for u in online {
            // Logged in before the start, so in the index's warm start, not published at
            // the start: a fifth of the users writing at one instant was, at a million
            // users, millions of Stores in flight at once and most of the peak memory.
            // The first refresh falls anywhere in one period.
            if self.live.is_empty() {
                break;
            }
            let sn = self.live[self.rng_users.random_range(0..self.live.len())];
            let session = self.users.login(u, sn);
            let m = &self.cfg.user_model;
            let first = self.rng_users.random_range(0..m.refresh_secs * 1000);
            self.q.at(self.start + first, Ev::Refresh { u, session });
            let len = m.session(&mut self.rng_users);
            self.q.at(self.start + len, Ev::Logout { u, session });
        }
    }

    /// Devices seen within the retention before the start (their user's name and the
    /// device's number), with when, and the super node of those online: for the index's
    /// warm start.
    pub fn warm_list(&self) -> Vec<(String, u32, i64, Option<Sn>)> {
        let ret = self.cfg.user_model.retention_ms() as i64;
        (0..self.users.all.len() as u32)
            .filter(|u| self.users.all[*u as usize].last_seen >= -ret)
            .map(|u| {
                let user = &self.users.all[u as usize];
                let (name, device) = self.device_name(u);
                (name, device, user.last_seen, (user.sn != users::NONE).then_some(user.sn))
            })
            .collect()
    }

    /// Device `d`'s user's name, and its number among the user's devices.
    fn device_name(&self, d: u32) -> (String, u32) {
        let (u, device) = users::owner(d, self.cfg.users);
        (users::name(u), device)
    }

    /// Runs until virtual time `until` (or the queue runs dry).
    pub fn run_until(&mut self, until: Ms, mut tick: impl FnMut(&Self)) {
        while let Some(ev) = self.q.pop_until(until.min(self.end)) {
            self.events += 1;
            if matches!(ev, Ev::Tick) {
                tick(self);
            }
            self.handle(ev);
        }
        self.q.advance(until.min(self.end));
    }

    fn handle(&mut self, ev: Ev<I::Msg, I::Timer>) {
        let now = self.q.now();
        match ev {
            Ev::Gossip { cluster: _, to, data } => {
                let mut acts = Vec::new();
                self.foca.deliver(to, &data, &mut self.net, &mut acts);
                self.actions(acts);
            }
            Ev::FocaTimer { cluster: _, slot, inc, timer } => {
                let mut acts = Vec::new();
                self.foca.timer(slot, inc, *timer, &mut self.net, &mut acts);
                self.actions(acts);
            }
            Ev::SnUp { sn } if sn > u32::MAX - self.cfg.sample && !self.full() => {
                self.cal_start(u32::MAX - sn);
            }
            Ev::SnUp { sn } => {
                if !self.sns[sn as usize].up {
                    self.sn_start(sn);
                }
            }
            Ev::SnEnd { sn, inc, next } => {
                let s = &self.sns[sn as usize];
                if !s.up || s.inc != inc {
                    return;
                }
                // The crash scenario marks its victims gone for good.
                let next = if s.life.single { Next::Dies(now) } else { next };
                self.sn_stop(sn);
                match next {
                    Next::Dies(_) => {
                        self.stats.sn_deaths += 1;
                        let after = self.cfg.churn.replace_after(&mut self.rng_churn);
                        self.q.after(after, Ev::Replace);
                    }
                    Next::Pauses(_, back) => {
                        self.stats.sn_pauses += 1;
                        self.q.at(back, Ev::SnUp { sn });
                    }
                }
            }
            Ev::Replace => {
                let life = self.cfg.churn.life(&mut self.rng_churn, now);
                let sn = self.add_sn(life);
                self.sn_start(sn);
            }
            Ev::GroupApply { group, change } => self.group_apply(group, change),
            Ev::ChangeDone { change } => {
                let Some(s) = self.sampled.as_ref() else { return };
                let (late, never) = (s.scheduled(change), s.unapplied(change));
                self.stats.fallback_applies += never.len() as u64;
                for g in late.into_iter().chain(never) {
                    self.group_apply(g, change);
                }
                if let Some(s) = self.sampled.as_mut() {
                    s.forget(change);
                }
            }
            Ev::Login { u, session } => {
                let user = self.users.all[u as usize];
                if user.session != session || self.users.is_online(u) {
                    return;
                }
                self.user_login(u, true);
            }
            Ev::Reconnect { u, session } => {
                let user = self.users.all[u as usize];
                if user.session != session || !self.users.is_online(u) || user.sn != users::NONE {
                    return;
                }
                self.stats.user_moves += 1;
                self.user_login(u, false);
            }
            Ev::Refresh { u, session } => {
                let user = self.users.all[u as usize];
                if user.session != session || !self.users.is_online(u) {
                    return;
                }
                if user.sn != users::NONE {
                    self.stats.refreshes += 1;
                    self.publish(user.sn, u, true);
                }
                self.q.after(self.cfg.user_model.refresh_secs * 1000, Ev::Refresh { u, session });
            }
            Ev::Logout { u, session } => {
                let user = self.users.all[u as usize];
                if user.session != session || !self.users.is_online(u) {
                    return;
                }
                if user.sn != users::NONE {
                    self.publish(user.sn, u, false);
                }
                self.users.logout(u, now);
                self.stats.logouts += 1;
                let next = self.cfg.user_model.next_login(&mut self.rng_users, now - self.start) + self.start;
                let session = self.users.all[u as usize].session;
                self.q.at(next, Ev::Login { u, session });
            }
            Ev::Lookup { real: true } => self.lookup(),
            Ev::Lookup { real: false } => self.schedule_lookup(),
            Ev::Scenario => self.scenario(),
            Ev::Heal => {
                self.net.heal();
                self.stats.healed_at = Some(now);
                self.last_change = now;
            }
            Ev::IndexMsg { to, inc, from, msg } => {
                let s = &mut self.sns[to as usize];
                if !s.up || s.inc != inc {
                    return;
                }
                let mut out = Vec::new();
                self.index.receive(now, to, from, *msg, &mut out);
                self.index_out(out);
            }
            Ev::IndexTimer { node, inc, timer } => {
                let s = &self.sns[node as usize];
                if !s.up || s.inc != inc {
                    return;
                }
                let mut out = Vec::new();
                self.index.timer(now, node, timer, &mut out);
                self.index_out(out);
            }
            Ev::Directory { node, inc, id, seen } => {
                let s = &self.sns[node as usize];
                if !s.up || s.inc != inc {
                    return;
                }
                let mut out = Vec::new();
                self.index.directory(now, node, id, seen, &mut out);
                self.index_out(out);
            }
            Ev::Tick => {
                if !self.stats.measuring
                    && (now >= self.cfg.warmup_secs * 1000 || (now > self.formation_ms() && self.formed()))
                {
                    self.begin_measuring();
                }
                if now > self.start {
                    self.stats.sample(now, self.live.len(), self.users.online.len());
                }
                if (now / 1000).is_multiple_of(60) {
                    let d = self.views.distinct();
                    self.stats.views_distinct_max = self.stats.views_distinct_max.max(d as u64);
                }
                self.q.after(1000, Ev::Tick);
            }
        }
    }

    /// The warm-up is over: slot maps from now on, traffic counted from zero, the index
    /// starts on the formed cluster, lookups begin.
    fn begin_measuring(&mut self) {
        let now = self.q.now();
        self.start = now;
        self.end = now + (self.cfg.hours * 3_600_000.0) as Ms;
        self.stats.warmup_ms = now;
        for sn in self.live.clone() {
            self.schedule_end(sn);
        }
        for sn in 0..self.sns.len() as Sn {
            if !self.sns[sn as usize].up && !self.sns[sn as usize].life.single {
                let back = now + (rng::exp_median(&mut self.rng_churn, self.cfg.churn.multi_down_hours) * 3.6e6) as Ms;
                self.q.at(back, Ev::SnUp { sn });
            }
        }
        self.place_users();
        if self.cfg.scenario != Scenario::None {
            self.q.at(now + self.cfg.scenario_at_ms(), Ev::Scenario);
        }
        for s in &mut self.foca.slots {
            s.traffic = Traffic::default();
        }
        self.stats.cal_since = self.foca.slots.iter().map(|s| if s.foca.is_some() { now } else { u64::MAX }).collect();
        self.stats.cal_up_ms = vec![0; self.foca.slots.len()];
        let ids: Vec<NodeId> = self.live.iter().map(|sn| self.sns[*sn as usize].id).collect();
        let truth = self.views.of(&ids);
        let t0 = super::view::thread_cpu_us();
        self.views.maps = true;
        self.views.map_for(&truth, None);
        self.stats.slot_map_build_us = super::view::thread_cpu_us().saturating_sub(t0);
        self.views.rebuild_us.reset();
        self.views.build_us.reset();
        self.views.rebuilds = 0;
        self.index.warm_start(&self.warm_list());
        for sn in self.live.clone() {
            let s = &mut self.sns[sn as usize];
            s.traffic = Traffic::default();
            let view = s.view.clone();
            self.views.map_for(&view, Some(&truth));
            self.index.node_up(now, sn, self.sns[sn as usize].id, rng::hash2(self.cfg.seed, "index", sn.into(), 0));
            let mut out = Vec::new();
            self.index.view(now, sn, &view, &mut out);
            self.index_out(out);
        }
        self.stats.converged_at_start = self.converged();
        self.stats.measuring = true;
        self.last_change = now;
        self.schedule_lookup();
    }

    fn actions(&mut self, acts: Vec<Action>) {
        let cluster = self.foca.tag as u8;
        for a in acts {
            match a {
                Action::Deliver { to, delay, data } => self.q.after(delay, Ev::Gossip { cluster, to, data }),
                Action::Timer { slot, inc, after, timer } => {
                    self.q.after(after, Ev::FocaTimer { cluster, slot, inc, timer: Box::new(timer) })
                }
                Action::Noticed { observer, member, bump, up } => self.noticed(observer, member, bump, up),
            }
        }
    }

    /// Foca node `observer` noticed a member come or go.
    fn noticed(&mut self, observer: u32, member: NodeId, bump: u32, up: bool) {
        let now = self.q.now();
        if let Some(s) = self.sampled.as_mut() {
            match s.noticed(&self.foca, observer, member, up, now) {
                super::sampled::Notice::Change { change, apply_at, groups, lag } => {
                    if self.stats.measuring {
                        self.stats.cal_lag(up, lag);
                    }
                    for g in groups {
                        self.q.at(apply_at, Ev::GroupApply { group: g, change });
                    }
                }
                super::sampled::Notice::Mirror { groups, slot } => self.mirror(groups, slot, up),
                super::sampled::Notice::Nothing => {}
            }
            return;
        }
        let Some(&m) = self.by_id.get(&member) else { return };
        // Only changes the observer was up for: a new node catching up on the members
        // it never knew is not a change reaching it late.
        if self.stats.measuring && self.sns[m as usize].since >= self.sns[observer as usize].since {
            let ms = &self.sns[m as usize];
            let truly = ms.up && self.foca.slots[m as usize].bump == bump;
            match (up, truly) {
                (true, true) => self.stats.lag(true, now - ms.since.max(self.start), 1),
                (false, false) if self.foca.slots[m as usize].bump == bump => {
                    self.stats.lag(false, now - ms.since.max(self.start), 1)
                }
                (false, true) => self.stats.false_downs += 1,
                _ => {}
            }
        }
        let old = self.sns[observer as usize].view.clone();
        let new = self.views.with(&old, member, up);
        self.set_view(observer, new, Some(&old));
    }

    /// A partition (or a false suspicion) seen by a calibration node, mirrored onto
    /// the super nodes its groups stand for.
    fn mirror(&mut self, groups: Vec<u32>, slot: u32, up: bool) {
        let k = self.cfg.sample;
        let members: Vec<NodeId> = (slot..self.sns.len() as u32)
            .step_by(k as usize)
            .filter(|b| self.sns[*b as usize].up)
            .map(|b| self.sns[b as usize].id)
            .collect();
        if members.is_empty() {
            return;
        }
        for g in groups {
            let s = self.sampled.as_mut().expect("sampled");
            let mut v = s.views[g as usize].clone();
            for id in &members {
                v = self.views.with(&v, *id, up);
            }
            s.views[g as usize] = v;
            self.refresh_group(g, None);
        }
    }

    fn group_apply(&mut self, g: u32, change: u32) {
        let now = self.q.now();
        let Some(s) = self.sampled.as_mut() else { return };
        let Some((member, up, at)) = s.take(g, change) else { return };
        let v = self.views.with(&s.views[g as usize].clone(), member, up);
        s.views[g as usize] = v;
        let lag = if self.stats.measuring && at >= self.start { Some(now - at) } else { None };
        self.refresh_group(g, lag.map(|l| (l, up)));
    }

    /// Gives every live super node of group `g` the group's view (itself included).
    fn refresh_group(&mut self, g: u32, lag: Option<(Ms, bool)>) {
        let k = self.cfg.sample;
        let gv = self.sampled.as_ref().expect("sampled").views[g as usize].clone();
        let mut n = 0;
        for b in (g..self.sns.len() as u32).step_by(k as usize) {
            if !self.sns[b as usize].up {
                continue;
            }
            n += 1;
            let old = self.sns[b as usize].view.clone();
            let new = self.views.with(&gv, self.sns[b as usize].id, true);
            if !Arc::ptr_eq(&old, &new) {
                self.set_view(b, new, Some(&old));
            }
        }
        if let Some((l, up)) = lag {
            self.stats.lag(up, l, n);
        }
    }

    fn set_view(&mut self, sn: Sn, view: Arc<View>, prev: Option<&Arc<View>>) {
        self.views.map_for(&view, prev);
        self.sns[sn as usize].view = view.clone();
        if self.stats.measuring && self.sns[sn as usize].up {
            let mut out = Vec::new();
            self.index.view(self.q.now(), sn, &view, &mut out);
            self.index_out(out);
        }
    }

    fn cal_start(&mut self, slot: u32) {
        let seeds = self.sampled.as_ref().map(|s| s.seeds(&self.foca, &mut self.rng_misc, slot)).unwrap_or_default();
        let mut acts = Vec::new();
        self.foca.start(slot, &seeds, &mut self.net, &mut acts);
        self.stats.cal_started(slot, self.q.now());
        if self.stats.measuring
            && let Some(s) = self.sampled.as_mut()
        {
            s.started(slot, self.q.now());
        }
        self.actions(acts);
    }

    fn sn_start(&mut self, sn: Sn) {
        let now = self.q.now();
        let s = &mut self.sns[sn as usize];
        s.up = true;
        s.inc += 1;
        s.since = now;
        let id = s.id;
        self.live_at[sn as usize] = self.live.len() as u32;
        self.live.push(sn);
        self.last_change = now;
        // Churn begins with the measurement: it schedules the first nodes' ends.
        if self.stats.measuring {
            self.stats.sn_starts += 1;
            self.schedule_end(sn);
        }
        if self.full() {
            // Three seeds, as a production config lists several.
            let mut seeds = Vec::new();
            for _ in 0..16 {
                if seeds.len() == 3 || self.live.len() < 2 {
                    break;
                }
                let j = self.live[self.rng_misc.random_range(0..self.live.len())];
                if j != sn && !seeds.contains(&j) {
                    seeds.push(j);
                }
            }
            let view = self.views.of(&[id]);
            self.sns[sn as usize].view = view;
            let mut acts = Vec::new();
            self.foca.start(sn, &seeds, &mut self.net, &mut acts);
            self.actions(acts);
        } else {
            let sampled = self.sampled.as_mut().expect("sampled");
            let g = sn % self.cfg.sample;
            let view = self.views.with(&sampled.views[g as usize].clone(), id, true);
            self.sns[sn as usize].view = view;
            if self.stats.measuring {
                self.sampled_change(sn, true);
            }
        }
        if self.stats.measuring {
            let view = self.sns[sn as usize].view.clone();
            // A joining node builds its first map from scratch (counted apart); in
            // sampled mode its group's map is the same view but itself, so it updates.
            let prev = self.sampled.as_ref().map(|s| s.views[(sn % self.cfg.sample) as usize].clone());
            self.views.map_for(&view, prev.as_ref());
            self.index.node_up(
                now,
                sn,
                id,
                rng::hash2(self.cfg.seed, "index", sn.into(), u64::from(self.sns[sn as usize].inc)),
            );
            let mut out = Vec::new();
            self.index.view(now, sn, &view, &mut out);
            self.index_out(out);
        }
    }

    /// Draws when super node `sn`'s session (or life) ends.
    fn schedule_end(&mut self, sn: Sn) {
        let now = self.q.now();
        let (life, inc) = (self.sns[sn as usize].life, self.sns[sn as usize].inc);
        let next = self.cfg.churn.next(&mut self.rng_churn, life, now);
        let (Next::Dies(t) | Next::Pauses(t, _)) = next;
        self.q.at(t.max(now + 1), Ev::SnEnd { sn, inc, next });
    }

    fn sn_stop(&mut self, sn: Sn) {
        let now = self.q.now();
        let s = &mut self.sns[sn as usize];
        if !s.up {
            return;
        }
        s.up = false;
        if self.stats.measuring {
            s.up_ms += now - s.since.max(self.start);
        }
        s.since = now;
        let at = self.live_at[sn as usize] as usize;
        self.live.swap_remove(at);
        if let Some(&moved) = self.live.get(at) {
            self.live_at[moved as usize] = at as u32;
        }
        self.live_at[sn as usize] = u32::MAX;
        self.last_change = now;
        if self.full() {
            self.foca.crash(sn);
        } else {
            self.sampled_change(sn, false);
        }
        if self.stats.measuring {
            self.index.node_down(now, sn);
        }
        for u in self.users.evict(sn) {
            let after = self.cfg.user_model.reconnect(&mut self.rng_users);
            let session = self.users.all[u as usize].session;
            self.q.after(after, Ev::Reconnect { u, session });
        }
    }

    /// A super node came or went (sampled mode): the calibration sample goes through a
    /// change of the same kind at the same moment, and the groups take it in as their
    /// calibration nodes notice it.
    fn sampled_change(&mut self, sn: Sn, up: bool) {
        let now = self.q.now();
        let id = self.sns[sn as usize].id;
        let s = self.sampled.as_mut().expect("sampled");
        let (change, mut cal) = s.change(&self.foca, &mut self.rng_misc, id, up, now);
        self.q.at(now + s.done_after(), Ev::ChangeDone { change });
        if up && cal.is_none() {
            // No sample slot is down: the sample grows by one, as the cluster did.
            let slot = self.foca.add();
            s.adopt(&self.foca, slot, change);
            cal = Some(slot);
        }
        if let Some(slot) = cal {
            if up {
                self.cal_start(slot);
            } else {
                self.stats.cal_stopped(slot, now);
                self.foca.crash(slot);
            }
        }
    }

    fn user_login(&mut self, u: u32, new: bool) {
        if self.live.is_empty() {
            return;
        }
        let now = self.q.now();
        let sn = self.live[self.rng_users.random_range(0..self.live.len())];
        let session = self.users.login(u, sn);
        self.users.all[u as usize].last_seen = now as i64 - self.start as i64;
        self.publish(sn, u, true);
        if new {
            self.stats.logins += 1;
            let m = &self.cfg.user_model;
            let first = if now == self.start {
                self.rng_users.random_range(0..m.refresh_secs * 1000)
            } else {
                m.refresh_secs * 1000
            };
            self.q.after(first, Ev::Refresh { u, session });
            let len = m.session(&mut self.rng_users);
            self.q.after(len, Ev::Logout { u, session });
        }
    }

    fn publish(&mut self, sn: Sn, u: u32, online: bool) {
        if !self.stats.measuring {
            return;
        }
        let (name, device) = self.device_name(u);
        let mut out = Vec::new();
        self.index.publish(self.q.now(), sn, Publish { user: &name, device, online }, &mut out);
        self.index_out(out);
    }

    fn schedule_lookup(&mut self) {
        const LOOKUP_REDRAW_MS: Ms = 1000;
        let online = self.users.online.len().max(1) as f64;
        let per_ms = online * self.cfg.user_model.lookups_per_hour / 3_600_000.0;
        if per_ms <= 0.0 {
            return;
        }
        let gap = -self.rng_users.random_range(f64::MIN_POSITIVE..1.0f64).ln() / per_ms;
        // The rate follows the users online: a gap longer than a second is drawn again a
        // second on, at the rate then (the exponential forgets it waited). Drawn once, a
        // gap set while few were online could outlast the run.
        if gap > LOOKUP_REDRAW_MS as f64 {
            self.q.after(LOOKUP_REDRAW_MS, Ev::Lookup { real: false });
        } else {
            self.q.after(gap.ceil() as Ms, Ev::Lookup { real: true });
        }
    }

    fn lookup(&mut self) {
        self.schedule_lookup();
        let now = self.q.now();
        let us = &self.users;
        if us.online.is_empty() {
            return;
        }
        let from = us.online[self.rng_users.random_range(0..us.online.len())];
        let sn = us.all[from as usize].sn;
        if sn == users::NONE {
            return;
        }
        let m = &self.cfg.user_model;
        let (key, exists) = if self.rng_users.random_bool(m.missing_share) {
            (format!("nobody-{}", self.rng_users.random::<u32>()), false)
        } else {
            let oldest = now as i64 - self.start as i64 - m.retention_ms() as i64;
            let mut pick = None;
            for _ in 0..16 {
                let t = self.rng_users.random_range(0..us.all.len() as u32);
                if t != from && (us.is_online(t) || us.all[t as usize].last_seen >= oldest) {
                    pick = Some(t);
                    break;
                }
            }
            let Some(t) = pick else { return };
            (self.device_name(t).0, true)
        };
        self.stats.lookup_issued(exists);
        let mut out = Vec::new();
        if let Some(id) = self.index.lookup(now, sn, &key, &mut out) {
            self.lookups.insert((sn, id), Pending { at: now, exists });
        }
        self.index_out(out);
    }

    fn index_out(&mut self, out: Outbox<I>) {
        let now = self.q.now();
        for o in out {
            match o {
                Out::Send { from, to, msg, bytes } => {
                    let bytes = bytes as u64;
                    self.sns[from as usize].traffic.sent[Class::Index as usize] += bytes;
                    let Some(&t) = self.by_id.get(&to) else { continue };
                    if !self.sns[t as usize].up {
                        continue;
                    }
                    if let Ok(delay) = self.net.send(u64::from(from), u64::from(t)) {
                        self.sns[t as usize].traffic.recv[Class::Index as usize] += bytes;
                        let (inc, fid) = (self.sns[t as usize].inc, self.sns[from as usize].id);
                        self.q.after(delay, Ev::IndexMsg { to: t, inc, from: fid, msg: Box::new(msg) });
                    }
                }
                Out::Schedule { node, at, timer } => {
                    let inc = self.sns[node as usize].inc;
                    self.q.at(at, Ev::IndexTimer { node, inc, timer });
                }
                Out::Found { node, id, found, asked, by_directory } => {
                    if let Some(p) = self.lookups.remove(&(node, id)) {
                        self.stats.lookup_done(p.exists, found, by_directory, asked, now - p.at);
                    }
                }
                Out::AskDirectory { node, id, user } => {
                    let ret = self.cfg.user_model.retention_ms() as i64;
                    let t = now as i64 - self.start as i64;
                    // The user is seen when any of its devices is: online now, or last
                    // seen within the retention (the latest of them).
                    let devices = self.users.all.len() as u32;
                    let seen = user.strip_prefix('u').and_then(|n| n.parse::<u32>().ok()).and_then(|u| {
                        users::devices_of(u, self.cfg.users, devices)
                            .map(|d| if self.users.is_online(d) { t } else { self.users.all[d as usize].last_seen })
                            .filter(|seen| *seen >= t - ret)
                            .max()
                    });
                    let inc = self.sns[node as usize].inc;
                    self.q.after(self.cfg.directory_rtt_ms, Ev::Directory { node, inc, id, seen });
                }
            }
        }
    }

    fn scenario(&mut self) {
        let now = self.q.now();
        self.stats.scenario_at = Some(now);
        match self.cfg.scenario {
            Scenario::None => {}
            Scenario::Crash30 => {
                let mut live = self.live.clone();
                let k = (live.len() as f64 * self.cfg.crash_share).round() as usize;
                for i in 0..k {
                    let j = self.rng_misc.random_range(i..live.len());
                    live.swap(i, j);
                }
                for &sn in &live[..k] {
                    // Gone for good: no return, no replacement within the run.
                    self.sns[sn as usize].life.single = true;
                    self.sn_stop(sn);
                }
                self.stats.crashed = k as u64;
            }
            Scenario::Partition => {
                self.net.partition(side);
                self.q.after(self.cfg.partition_secs * 1000, Ev::Heal);
            }
            Scenario::FlashCrowd => {
                let want = (self.users.all.len() as f64 * self.cfg.flash_share) as usize;
                let mut n = 0;
                for _ in 0..want * 4 {
                    if n == want {
                        break;
                    }
                    let u = self.rng_users.random_range(0..self.users.all.len() as u32);
                    if self.users.is_online(u) {
                        continue;
                    }
                    let at = now + self.rng_users.random_range(0..self.cfg.flash_secs * 1000);
                    let session = self.users.all[u as usize].session;
                    self.q.at(at, Ev::Login { u, session });
                    n += 1;
                }
                self.stats.flash_logins = n as u64;
            }
        }
        self.last_change = now;
    }

    /// The true membership: every super node up, sorted.
    pub fn truth(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.live.iter().map(|sn| self.sns[*sn as usize].id).collect();
        v.sort_unstable();
        v
    }

    /// Whether every live super node's view is the true membership.
    pub fn converged(&self) -> bool {
        let t = self.truth();
        self.live.iter().all(|sn| self.sns[*sn as usize].view.ids() == t.as_slice())
    }

    /// Live super nodes whose view differs from the truth.
    pub fn diverged(&self) -> usize {
        let t = self.truth();
        self.live.iter().filter(|sn| self.sns[**sn as usize].view.ids() != t.as_slice()).count()
    }

    /// Super nodes up now.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Closes the books at the end of the run: up-time and traffic per node.
    pub fn finish(&mut self) {
        let now = self.q.now();
        for s in &mut self.sns {
            if s.up {
                s.up_ms += now - s.since.max(self.start);
                s.since = now;
            }
        }
        for (i, s) in self.foca.slots.iter().enumerate() {
            if s.foca.is_some() {
                self.stats.cal_stopped(i as u32, now);
            }
        }
    }
}

trait ContainsSorted {
    fn contains_sorted(&self, x: u32) -> bool;
}

impl ContainsSorted for Vec<u32> {
    fn contains_sorted(&self, x: u32) -> bool {
        self.binary_search(&x).is_ok()
    }
}
