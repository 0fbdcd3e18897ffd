//! # confab-loadtest
//!
//! Simulated hosts in bulk against a running confab network, beside the baselines that
//! make its figures mean something. Modelled on quinn's `perf` tool: one subcommand per
//! scenario, a progress bar while it runs, a table at the end, `--json FILE` with every
//! figure. Every run is bounded in time and count and sends only to the addresses it is
//! given (or to servers it starts itself on loopback).
//!
//! - [`packet`] — the media-shaped inner packet every traffic scenario carries.
//! - [`traffic`] — the engine: pairs of UDP legs, paced or flat-out senders, epoll
//!   receivers, latency, jitter, loss.
//! - [`relay`] — `relay`: real hosts logged in, one confab relay session per pair.
//! - [`raw`] — `raw`, `raw-unbatched`: the harness's own one-thread UDP forwarders, the
//!   baselines (batched as the relay is, and one datagram per call).
//! - [`limit`] — `limit`: the highest loss-free rate, searched by bisection.
//! - [`cpu`], [`sockets`] — every server's CPU per thread and process, its buffers.
//! - [`turn`] — `turn`: a minimal TURN client and coturn as a child process.
//! - [`hosts`] — logging real hosts in through the confab host library.
//! - [`scenarios`] — each scenario run to one result; `login`, `hosts`, `lookup`.
//! - [`chat`] — `chat`: messages through the store, online latency and offline hand-over.
//! - [`lateness`] — `lateness`: a call's media clock under signalling load, on a whole
//!   network the harness starts in its own process.
//! - [`server`] — the server's CPU, memory and relay counters: `/metrics`, `/proc`.
//! - [`stats`], [`report`] — histograms, the JSON document, the tables.
//! - [`sim`] — `simulate`: a deterministic internet-scale simulation on virtual time.

pub mod chat;
pub mod cpu;
pub mod hosts;
pub mod lateness;
pub mod limit;
pub mod packet;
pub mod raw;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod sim;
pub mod sockets;
pub mod stats;
pub mod traffic;
pub mod turn;

/// Runs `f` to completion on `rt`, inside a `LocalSet`: a host `Session`'s futures borrow
/// it across awaits and are not `Send`, so the scenarios spawn them with `spawn_local`
/// (the sessions' own background tasks still run on the runtime's worker threads).
pub fn block_on<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    tokio::task::LocalSet::new().block_on(rt, f)
}
