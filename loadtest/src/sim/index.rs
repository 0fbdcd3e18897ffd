//! The hooks through which the Global Index runs inside the simulator. The simulator
//! calls them when a super node starts or stops, when its view changes, when a user
//! publishes at it and when a lookup is issued at it; the index answers with
//! [`Out`]puts, which the simulator carries out (sends through the simulated network in
//! the `index` byte class, timers on the event queue, results into the report).
//!
//! Until `confab::index::node` exists, [`NotWired`] stands in: lookups are issued and
//! counted but never answered, and the report says `index: not wired`.

use super::clock::Ms;
use super::view::View;
use confab::index::NodeId;
use std::sync::Arc;

/// A super node's number in the simulation.
pub type Sn = u32;

/// What a user published.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// The user's name (its index key).
    pub user: &'a str,
    /// Which of the user's devices (each its own session and entry).
    pub device: u32,
    /// Online (a login or refresh) or offline (a logout).
    pub online: bool,
}

/// What the index asks the simulator to do.
#[derive(Debug)]
pub enum Out<M, T> {
    /// Send `msg`, `bytes` long on the wire (sealing overhead included), from `from`.
    Send { from: Sn, to: NodeId, msg: M, bytes: usize },
    /// Call [`Index::timer`] on `node` at `at`.
    Schedule { node: Sn, at: Ms, timer: T },
    /// Lookup `id` issued at `node` ended: found or not, super nodes asked, and whether
    /// the login server's directory gave the answer.
    Found { node: Sn, id: u64, found: bool, asked: u32, by_directory: bool },
    /// Ask the login server's directory about `user` for lookup `id`.
    AskDirectory { node: Sn, id: u64, user: String },
}

/// The outputs of one call.
pub type Outbox<I> = Vec<Out<<I as Index>::Msg, <I as Index>::Timer>>;

/// A Global Index the simulator can run: one state machine per super node.
pub trait Index: Sized {
    /// An RPC between super nodes.
    type Msg;
    /// A timer one node set.
    type Timer;

    /// Whether lookups get answers (false: the report leaves the index figures null).
    fn wired(&self) -> bool;
    /// Figures of its own for the report (`index_detail`).
    fn detail(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Devices seen within the retention before the start (user, device), with when
    /// (ms, ≤ 0) and, for those online, their super node: the warm start the index
    /// places before the run.
    fn warm_start(&mut self, seen: &[(String, u32, i64, Option<Sn>)]);
    /// Super node `node` (index identity `id`) started; `seed` for its randomness.
    fn node_up(&mut self, now: Ms, node: Sn, id: NodeId, seed: u64);
    /// Super node `node` stopped (its state is gone).
    fn node_down(&mut self, now: Ms, node: Sn);
    /// `node`'s view changed.
    fn view(&mut self, now: Ms, node: Sn, view: &Arc<View>, out: &mut Outbox<Self>);
    /// A user logged in at `node` published.
    fn publish(&mut self, now: Ms, node: Sn, p: Publish<'_>, out: &mut Outbox<Self>);
    /// A user at `node` looks `key` up: the lookup's id, if the index answers lookups.
    fn lookup(&mut self, now: Ms, node: Sn, key: &str, out: &mut Outbox<Self>) -> Option<u64>;
    /// An RPC from `from` reached `node`.
    fn receive(&mut self, now: Ms, node: Sn, from: NodeId, msg: Self::Msg, out: &mut Outbox<Self>);
    /// A timer of `node` came due.
    fn timer(&mut self, now: Ms, node: Sn, timer: Self::Timer, out: &mut Outbox<Self>);
    /// The directory's answer to [`Out::AskDirectory`]: when `user` was last seen, if
    /// within the retention.
    fn directory(&mut self, now: Ms, node: Sn, id: u64, seen: Option<i64>, out: &mut Outbox<Self>);
}

/// No index: lookups are counted, not answered.
#[derive(Debug, Default)]
pub struct NotWired;

impl Index for NotWired {
    type Msg = ();
    type Timer = ();

    fn wired(&self) -> bool {
        false
    }
    fn warm_start(&mut self, _: &[(String, u32, i64, Option<Sn>)]) {}
    fn node_up(&mut self, _: Ms, _: Sn, _: NodeId, _: u64) {}
    fn node_down(&mut self, _: Ms, _: Sn) {}
    fn view(&mut self, _: Ms, _: Sn, _: &Arc<View>, _: &mut Outbox<Self>) {}
    fn publish(&mut self, _: Ms, _: Sn, _: Publish<'_>, _: &mut Outbox<Self>) {}
    fn lookup(&mut self, _: Ms, _: Sn, _: &str, _: &mut Outbox<Self>) -> Option<u64> {
        None
    }
    fn receive(&mut self, _: Ms, _: Sn, _: NodeId, _: (), _: &mut Outbox<Self>) {}
    fn timer(&mut self, _: Ms, _: Sn, _: (), _: &mut Outbox<Self>) {}
    fn directory(&mut self, _: Ms, _: Sn, _: u64, _: Option<i64>, _: &mut Outbox<Self>) {}
}
