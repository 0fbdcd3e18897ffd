//! What the core asks its shell to do, and what the shell brings back: datagrams and
//! frames to send, TCP events, and effects. Plain data; the shell owns every socket.

use crate::buddy::{BuddyAnswer, BuddyOp};
use crate::host::cache::CacheEntry;
use std::net::{IpAddr, SocketAddr};

/// A TCP connection, named by the core when it asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

/// Where a transmit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A datagram from port P to this address.
    Udp(SocketAddr),
    /// A frame on this TCP connection (the shell adds the length prefix its framing needs).
    Tcp(ConnId),
    /// A datagram from one of a call's extra sockets (the birthday technique's, opened by
    /// [`Effect::OpenProbeSockets`]) to `to`.
    Probe {
        /// The call the sockets belong to.
        call: [u8; 16],
        /// Which of its sockets (0-based).
        socket: u16,
        /// Where to.
        to: SocketAddr,
    },
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dest: Dest,
    /// One whole frame or datagram.
    pub bytes: Vec<u8>,
}

/// What happened on a TCP connection the core asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpEvent {
    /// The connection is up, from this local address.
    Connected {
        /// Our end.
        local: SocketAddr,
    },
    /// The connection could not be made.
    ConnectFailed(String),
    /// One whole frame arrived (its length prefix already removed).
    Frame(Vec<u8>),
    /// The other end closed, or the connection broke.
    Closed,
}

/// How frames are delimited on a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A `u16` length, then a wire frame (`net::tcp`): a super-node link.
    Wire,
    /// A `u16` length, then a relay datagram (`relay::tcp`): a relay leg.
    Relay,
}

/// Names one effect, so its result finds the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(pub u64);

/// Work the shell does for the core, outside the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Open a TCP connection; the outcome comes back as a [`TcpEvent`] on `conn`.
    TcpConnect {
        /// The name the core gives the connection.
        conn: ConnId,
        /// Where to.
        addr: SocketAddr,
        /// How its frames are delimited.
        framing: Framing,
    },
    /// Close a TCP connection once what was queued on it is written.
    TcpClose {
        /// Which.
        conn: ConnId,
    },
    /// Find the local interface address the kernel would send from toward this address
    /// (never the wildcard); answered by [`EffectResult::LocalIp`].
    LocalIpToward(SocketAddr),
    /// Write the host cache (these entries) to its file; fire and forget, and a shell
    /// may coalesce writes that come close together.
    SaveCache(Vec<CacheEntry>),
    /// Open up to `n` extra UDP sockets for a call (the birthday technique's hard side),
    /// replacing any it had, each letting in only datagrams from `peer`. Answered by
    /// [`EffectResult::ProbeSocketsOpened`]; what they receive comes back tagged with the
    /// call and the socket's index.
    OpenProbeSockets {
        /// The call.
        call: [u8; 16],
        /// How many to open, at most.
        n: u16,
        /// The only address they take datagrams from.
        peer: IpAddr,
    },
    /// Close a call's extra sockets but those in `keep` (all of them when it is empty).
    /// No result.
    CloseProbeSockets {
        /// The call.
        call: [u8; 16],
        /// The indices to keep open.
        keep: Vec<u16>,
    },
    /// One request to the login server, run on a task with `host::account`; the outcome
    /// comes back as [`EffectResult::Login`].
    Login(LoginCall),
    /// Work on the chat history (a SQLite file in the home folder); the answer, for the
    /// kinds that have one, comes back as [`EffectResult::Chat`].
    Chat(super::chat::ChatEffect),
    /// Disk work for a file transfer (`files::run_effect`); the answer comes back as
    /// [`EffectResult::File`].
    File(super::files::FileEffect),
}

/// A request to the login server: one enveloped request per TCP connection, with the
/// fallback over servers, keys and puzzles that `host::account` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginCall {
    /// An operation on our buddy list (`account::buddy`).
    Buddy(BuddyOp),
    /// A revocation list newer than ours (`account::refresh_revocations`), adopted into
    /// the trusted keys the shell and the core share.
    Revocations,
}

/// What a login call brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAnswer {
    /// The login server's answer to a buddy operation.
    Buddy(BuddyAnswer),
    /// The version of the revocation list adopted; None when there was none newer (or
    /// none could be had: `refresh_revocations` does not say which).
    Revocations(Option<u64>),
}

/// The outcome of an effect, brought back by the shell under the effect's id (effects that
/// answer nothing have no variant).
#[derive(Debug)]
pub enum EffectResult {
    /// The answer to [`Effect::LocalIpToward`]: None if the system knows no route.
    LocalIp(Option<IpAddr>),
    /// [`Effect::OpenProbeSockets`] is done: sockets `0..opened` of `call` are open.
    ProbeSocketsOpened {
        /// The call.
        call: [u8; 16],
        /// How many opened (their indices are `0..opened`).
        opened: u16,
    },
    /// A [`Effect::Login`]'s outcome.
    Login(Result<LoginAnswer, crate::host::account::AccountError>),
    /// A [`Effect::Chat`]'s answer.
    Chat(super::chat::ChatEffectResult),
    /// A [`Effect::File`]'s answer.
    File(Box<super::files::FileEffectResult>),
}
