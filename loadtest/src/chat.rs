//! `chat`: messages through the super nodes' store, online and offline.
//!
//! Half the hosts write, each to its own partner in the other half; the partners are
//! buddies, so every message also sends a delivery receipt back through the store.
//! Online: each writer sends at `rate` a second for `duration`, and the partner's host
//! process measures the time from the send's start to the message's arrival as an event
//! (both in this process: one clock). Offline: the partners log out, each writer leaves
//! `offline` messages, then the partners log in again from the same home folders, and the
//! time from the start of that login to the last of its messages in the history is the
//! hand-over time.

use crate::hosts::{self, Hosts};
use crate::report::ChatResult;
use crate::scenarios::{bar, sample};
use crate::server::{self, Probe};
use crate::stats::{self, Latency};
use confab::host::Session;
use confab::host::buddies::Event;
use confab::host::home::Home;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Hosts (an even number: writers and their partners).
    pub hosts: usize,
    /// Messages per second per writer, online.
    pub rate: f64,
    /// How long writers write, online.
    pub duration: Duration,
    /// Messages each writer leaves for its offline partner.
    pub offline: usize,
    /// How long a message or a hand-over may take before it counts as lost.
    pub patience: Duration,
}

/// Send starts by message text, read by the partner's task.
type Started = Arc<Mutex<HashMap<String, Instant>>>;

/// The scenario; the hosts are logged out at the end whatever happened.
pub async fn chat(hosts: &Arc<Hosts>, o: &ChatOptions, probe: &Probe, quiet: bool) -> anyhow::Result<ChatResult> {
    anyhow::ensure!(o.hosts >= 2 && o.hosts.is_multiple_of(2), "--hosts: an even number, at least 2");
    let pairs = o.hosts / 2;
    let writers_names: Vec<String> = (0..pairs).map(|i| hosts.user(&format!("cw{i}"))).collect();
    let partner_names: Vec<String> = (0..pairs).map(|i| hosts.user(&format!("cp{i}"))).collect();
    let b = bar(quiet, "chat", o.hosts as u64, true);
    b.set_message("logging in");
    let writers = hosts.login_all(&writers_names, &b).await?;
    let mut partner_homes = Vec::new();
    let mut partners = Vec::new();
    for name in &partner_names {
        let home = hosts.home()?;
        hosts.register(&home, name).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        partners.push(hosts.login(&home, name).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?);
        partner_homes.push(home);
        b.inc(1);
    }
    b.set_message("making buddies");
    let (mut writers, mut partners) = befriend(writers, partners, &partner_names, &writers_names).await?;
    b.finish_and_clear();

    // Online.
    let before = sample(probe).await;
    let started: Started = Arc::default();
    let b = bar(quiet, "chat online", o.duration.as_millis() as u64, false);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut w) in writers.drain(..).enumerate() {
        let (to, started, o) = (partner_names[i].clone(), started.clone(), o.clone());
        set.spawn_local(async move {
            let mut sent = 0u64;
            let mut errors = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(0.01)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while t0.elapsed() < o.duration {
                tick.tick().await;
                let text = format!("{i}:{sent}");
                started.lock().expect("started lock").insert(text.clone(), Instant::now());
                match w.send_chat(&to, &text).await {
                    Ok(_) => sent += 1,
                    Err(e) => *errors.entry(e.to_string()).or_insert(0u64) += 1,
                }
                // Receipts come back as history writes; what else arrives is not waited for.
                while w.next_event_within(Duration::ZERO).await.is_some() {}
            }
            Side::Writer { session: w, sent, errors }
        });
    }
    for (i, mut p) in partners.drain(..).enumerate() {
        let (started, o) = (started.clone(), o.clone());
        set.spawn_local(async move {
            let mut latency = stats::histogram();
            let prefix = format!("{i}:");
            while t0.elapsed() < o.duration + o.patience {
                let Some(e) = p.next_event_within(Duration::from_millis(100)).await else { continue };
                if let Event::Chat { text, .. } = e
                    && text.starts_with(&prefix)
                    && let Some(at) = started.lock().expect("started lock").remove(&text)
                {
                    stats::record(&mut latency, at.elapsed());
                }
                if t0.elapsed() >= o.duration
                    && !started.lock().expect("started lock").keys().any(|k| k.starts_with(&prefix))
                {
                    break;
                }
            }
            Side::Partner { session: p, latency }
        });
    }
    let mut sent = 0;
    let mut errors = BTreeMap::new();
    let mut latency = stats::histogram();
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(Side::Writer { session, sent: n, errors: e })) => {
                    writers.push(session);
                    sent += n;
                    for (k, v) in e { *errors.entry(k).or_insert(0) += v; }
                }
                Some(Ok(Side::Partner { session, latency: l })) => {
                    partners.push(session);
                    let _ = latency.add(&l);
                }
                Some(Err(e)) => *errors.entry(format!("chat task: {e}")).or_insert(0) += 1,
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                b.set_position(t0.elapsed().as_millis() as u64);
                b.set_message(format!("{} in flight", started.lock().expect("started lock").len()));
            }
        }
    }
    b.finish_and_clear();
    let window = t0.elapsed().as_secs_f64().max(0.001);
    let after = sample(probe).await;
    let spent = server::spent(&before, &after);
    let lost = started.lock().expect("started lock").len() as u64;
    let received = latency.len();

    // Offline: the partners leave, the writers write, the partners come back.
    let b = bar(quiet, "chat offline", pairs as u64, true);
    b.set_message("partners away");
    hosts::logout_all(std::mem::take(&mut partners)).await;
    let mut stored = 0u64;
    for (i, w) in writers.iter_mut().enumerate() {
        for k in 0..o.offline {
            match w.send_chat(&partner_names[i], &format!("away {k}")).await {
                Ok(_) => stored += 1,
                Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
            }
        }
    }
    hosts::logout_all(std::mem::take(&mut writers)).await;
    b.set_message("partners back");
    let mut handover = stats::histogram();
    let mut login = stats::histogram();
    let mut handed = 0u64;
    let mut set = tokio::task::JoinSet::new();
    for (home, name) in partner_homes.into_iter().zip(partner_names.iter().cloned()) {
        let (hosts, o) = (hosts.clone(), o.clone());
        set.spawn_local(async move { come_back(&hosts, home, &name, &o).await });
    }
    while let Some(joined) = set.join_next().await {
        b.inc(1);
        match joined {
            Ok(Ok(back)) => {
                stats::record(&mut login, back.login);
                if let Some(t) = back.all_in {
                    stats::record(&mut handover, t);
                }
                handed += back.messages;
                partners.push(back.session);
            }
            Ok(Err(e)) => *errors.entry(format!("{e:#}")).or_insert(0) += 1,
            Err(e) => *errors.entry(format!("chat task: {e}")).or_insert(0) += 1,
        }
    }
    b.finish_and_clear();
    hosts::logout_all(partners).await;
    let offline_expected = (pairs * o.offline) as u64;
    Ok(ChatResult {
        hosts: o.hosts,
        rate_per_writer: o.rate,
        window_s: window,
        sent,
        received,
        lost,
        messages_per_s: received as f64 / window,
        latency_us: Latency::of(&latency),
        server_cpu_us_per_message: spent.cpu_s.filter(|_| received > 0).map(|c| c * 1e6 / received as f64),
        server: spent,
        offline_per_partner: o.offline,
        offline_stored: stored,
        offline_handed: handed,
        offline_missing: offline_expected.saturating_sub(handed),
        login_us: Latency::of(&login),
        handover_us: Latency::of(&handover),
        errors,
    })
}

enum Side {
    Writer { session: Session, sent: u64, errors: BTreeMap<String, u64> },
    Partner { session: Session, latency: Histogram<u64> },
}

/// Each writer asks its partner to be buddies; each partner agrees once the request is
/// there (receipts go to buddies only).
async fn befriend(
    mut writers: Vec<Session>,
    mut partners: Vec<Session>,
    partner_names: &[String],
    writer_names: &[String],
) -> anyhow::Result<(Vec<Session>, Vec<Session>)> {
    for (w, to) in writers.iter_mut().zip(partner_names) {
        w.add_buddy(to, "").await.map_err(|e| anyhow::anyhow!("asking {to}: {e}"))?;
    }
    for (p, from) in partners.iter_mut().zip(writer_names) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.buddy_requests().iter().any(|r| r.from.eq_ignore_ascii_case(from)) {
            anyhow::ensure!(Instant::now() < deadline, "{from}'s buddy request did not arrive within 10 s");
            let _ = p.next_event_within(Duration::from_millis(100)).await;
        }
        p.answer_buddy(from, true).await.map_err(|e| anyhow::anyhow!("answering {from}: {e}"))?;
    }
    Ok((writers, partners))
}

struct Back {
    session: Session,
    login: Duration,
    all_in: Option<Duration>,
    messages: u64,
}

/// A partner logs in again and waits for what was left for it.
async fn come_back(hosts: &Hosts, home: Home, name: &str, o: &ChatOptions) -> anyhow::Result<Back> {
    let t = Instant::now();
    let mut session = hosts.login(&home, name).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let login = t.elapsed();
    let mut messages = 0u64;
    let deadline = t + o.patience;
    while messages < o.offline as u64 && Instant::now() < deadline {
        if let Some(Event::Chat { text, .. }) = session.next_event_within(deadline - Instant::now()).await
            && text.starts_with("away ")
        {
            messages += 1;
        }
    }
    let all_in = (messages == o.offline as u64).then(|| t.elapsed());
    Ok(Back { session, login, all_in, messages })
}
