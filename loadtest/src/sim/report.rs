//! What a run shows: a table on standard output and a JSON document.

use super::Mode;
use super::index::Index;
use super::net::Class;
use super::world::World;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A finished run's figures.
pub struct Report {
    /// Every figure, as written with `--json`.
    pub json: Value,
}

fn q(h: &Histogram<u64>, p: f64) -> Value {
    if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(p)) }
}

fn q_ms(h: &Histogram<u64>, p: f64) -> Value {
    if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(p) as f64 / 1000.0) }
}

fn dist(h: &Histogram<u64>) -> Value {
    json!({"samples": h.len(), "p50": q(h, 0.5), "p90": q(h, 0.9), "p99": q(h, 0.99), "max": q(h, 1.0)})
}

fn ratio(a: u64, b: u64) -> Value {
    if b == 0 { Value::Null } else { json!(a as f64 / b as f64) }
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Bytes per second per super node over the time it was up in the window: (all,
/// gossip, index, all of the nodes up throughout the window), each sent plus received.
/// Nodes up less than a minute are left out (their rate is mostly the join's burst over a
/// tiny denominator). A node that joined or came back during the window fills its slots
/// from the others, so the p99 of all nodes is mostly theirs: the last histogram shows
/// the steady state apart.
fn per_node<I: Index>(w: &World<I>) -> (Histogram<u64>, Histogram<u64>, Histogram<u64>, Histogram<u64>) {
    let (mut all, mut gossip, mut index) =
        (Histogram::new(3).expect("valid"), Histogram::new(3).expect("valid"), Histogram::new(3).expect("valid"));
    let mut steady = Histogram::new(3).expect("valid");
    let window_ms = (w.cfg.hours * 3_600_000.0) as u64;
    let k = w.cfg.sample as usize;
    for (i, s) in w.sns.iter().enumerate() {
        if s.up_ms < 60_000 {
            continue;
        }
        let g = if w.full() {
            w.foca.slots[i].traffic.total(Class::Gossip) as f64 * 1000.0 / s.up_ms as f64
        } else {
            let slot = i % k;
            let up = w.stats.cal_up_ms.get(slot).copied().unwrap_or(0);
            if up < 60_000 {
                continue;
            }
            w.foca.slots[slot].traffic.total(Class::Gossip) as f64 * 1000.0 / up as f64
        };
        let x = s.traffic.total(Class::Index) as f64 * 1000.0 / s.up_ms as f64;
        let _ = gossip.record(g as u64);
        let _ = index.record(x as u64);
        let _ = all.record((g + x) as u64);
        if s.up_ms + 1000 >= window_ms {
            let _ = steady.record((g + x) as u64);
        }
    }
    (all, gossip, index, steady)
}

impl Report {
    /// The figures of finished world `w`, which took `wall` seconds and `cpu_us` of CPU.
    pub fn of<I: Index>(w: &World<I>, wall: f64, cpu_us: u64) -> Self {
        let st = &w.stats;
        let wired = w.index.wired();
        let (all, gossip, index, steady) = per_node(w);
        let rebuild = &w.views.rebuild_us;
        let nullable = |v: Value| if wired { v } else { Value::Null };
        let membership_json = json!({
            "mode": w.cfg.mode(),
            "supernodes": w.cfg.supernodes,
            "full_max": w.cfg.full_max,
            "sample": if w.cfg.mode() == Mode::Sampled { json!(w.cfg.sample) } else { Value::Null },
            "lag_scale": if w.cfg.mode() == Mode::Sampled { json!(w.cfg.sample_scale()) } else { Value::Null },
            "converged_at_start": st.converged_at_start,
            "warmup_ms": st.warmup_ms,
            "view_lag_join_ms": dist(&st.lag_up),
            "view_lag_leave_ms": dist(&st.lag_down),
            "sample_lag_join_ms": dist(&st.cal_lag_up),
            "sample_lag_leave_ms": dist(&st.cal_lag_down),
            "false_downs": st.false_downs,
            "fallback_applies": st.fallback_applies,
            "packets_delivered": w.net.passed,
            "packets_lost": w.net.lost,
            "packets_partitioned": w.net.partitioned,
            "live_min": q(&st.live, 0.0),
            "live_max": q(&st.live, 1.0),
        });
        let churn_json = json!({
            "model": "exponential lives and sessions (Guha et al. 2006 medians)",
            "parameters": w.cfg.churn,
            "starts": st.sn_starts,
            "deaths": st.sn_deaths,
            "pauses": st.sn_pauses,
        });
        let users_json = json!({
            "model": "diurnal sinusoid, exponential sessions, per device (online_*, logins, logouts, refreshes and moves count devices)",
            "parameters": w.cfg.user_model,
            "count": w.cfg.users,
            "devices": w.users.all.len(),
            "online_at_start": st.warm_online,
            "online_min": q(&st.online, 0.0),
            "online_max": q(&st.online, 1.0),
            "logins": st.logins,
            "logouts": st.logouts,
            "refreshes": st.refreshes,
            "moves": st.user_moves,
            "seen_in_retention_at_start": w.warm_list().len(),
        });
        let scenario_json = json!({
            "name": w.cfg.scenario,
            "at_ms": st.scenario_at.map(|t| t - w.start),
            "crashed": st.crashed,
            "healed_at_ms": st.healed_at.map(|t| t - w.start),
            "flash_logins": st.flash_logins,
        });
        let mut json = json!({
            "command": "simulate",
            "index": if wired { "wired" } else { "not wired" },
            "crypto": "stand-in, real message sizes",
            "findability": nullable(ratio(st.found, st.answered_existing)),
            "found_by_directory": nullable(ratio(st.found_by_directory, st.answered_existing)),
            "lookup_messages_p50": nullable(q(&st.lookup_messages, 0.5)),
            "lookup_messages_p99": nullable(q(&st.lookup_messages, 0.99)),
            "lookup_latency_ms_p50": nullable(q(&st.lookup_latency, 0.5)),
            "lookup_latency_ms_p99": nullable(q(&st.lookup_latency, 0.99)),
            "lookups": {
                "existing_issued": st.lookups_existing,
                "missing_issued": st.lookups_missing,
                "existing_answered": st.answered_existing,
                "missing_found": nullable(json!(st.found_missing)),
            },
            "per_node_bytes_per_second_p50": q(&all, 0.5),
            "per_node_bytes_per_second_p99": q(&all, 0.99),
            "gossip_bytes_per_second_p50": q(&gossip, 0.5),
            "gossip_bytes_per_second_p99": q(&gossip, 0.99),
            "index_bytes_per_second_p50": nullable(q(&index, 0.5)),
            "index_bytes_per_second_p99": nullable(q(&index, 0.99)),
            "slot_map_rebuild_ms_p50": q_ms(rebuild, 0.5),
            "slot_map_rebuild_ms_p99": q_ms(rebuild, 0.99),
            "slot_map_rebuild_ms_max": q_ms(rebuild, 1.0),
            "slot_map_rebuilds": w.views.rebuilds,
            "slot_map_full_build_ms": st.slot_map_build_us as f64 / 1000.0,
            "slot_map_first_build_ms_p99": q_ms(&w.views.build_us, 0.99),
            "views_distinct_max": st.views_distinct_max,
            "wall_seconds": wall,
            "cpu_seconds": cpu_us as f64 / 1e6,
            "peak_rss_bytes": peak_rss_bytes(),
            "events": w.events,
            "membership": membership_json,
            "churn": churn_json,
            "users": users_json,
            "scenario": scenario_json,
            "config": {
                "hours": w.cfg.hours, "seed": w.cfg.seed, "warmup_secs": w.cfg.warmup_secs,
                "latency_ms": [w.cfg.latency_min_ms, w.cfg.latency_max_ms], "loss": w.cfg.loss,
                "slots": w.cfg.slots, "replicas": w.cfg.replicas,
            },
        });
        // (Set apart: one json! of every field passes the macro's recursion limit.)
        json["missing_lookup_messages_p50"] = nullable(q(&st.missing_messages, 0.5));
        json["missing_lookup_messages_p99"] = nullable(q(&st.missing_messages, 0.99));
        json["index_detail"] = w.index.detail();
        json["per_node_bytes_per_second_up_throughout_p50"] = q(&steady, 0.5);
        json["per_node_bytes_per_second_up_throughout_p99"] = q(&steady, 0.99);
        json["nodes_up_throughout"] = json!(steady.len());
        Self { json }
    }

    /// The figures as a table.
    pub fn table(&self) -> String {
        let j = &self.json;
        let f = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::Number(n) => n
                .as_f64()
                .map(|x| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.3}") })
                .unwrap_or_default(),
            v => v.to_string().trim_matches('"').to_owned(),
        };
        let m = &j["membership"];
        let rows: Vec<(&str, String)> = vec![
            ("index", f(&j["index"])),
            ("crypto", f(&j["crypto"])),
            (
                "membership mode",
                format!("{} ({} super nodes, sample {})", f(&m["mode"]), f(&m["supernodes"]), f(&m["sample"])),
            ),
            ("findability", f(&j["findability"])),
            ("found by directory", f(&j["found_by_directory"])),
            ("lookup messages p50/p99", format!("{} / {}", f(&j["lookup_messages_p50"]), f(&j["lookup_messages_p99"]))),
            (
                "  names nobody has p50/p99",
                format!("{} / {}", f(&j["missing_lookup_messages_p50"]), f(&j["missing_lookup_messages_p99"])),
            ),
            (
                "lookup latency ms p50/p99",
                format!("{} / {}", f(&j["lookup_latency_ms_p50"]), f(&j["lookup_latency_ms_p99"])),
            ),
            (
                "lookups issued (existing/missing)",
                format!("{} / {}", f(&j["lookups"]["existing_issued"]), f(&j["lookups"]["missing_issued"])),
            ),
            (
                "bytes/s per node p50/p99",
                format!("{} / {}", f(&j["per_node_bytes_per_second_p50"]), f(&j["per_node_bytes_per_second_p99"])),
            ),
            (
                "  nodes up throughout p50/p99",
                format!(
                    "{} / {}",
                    f(&j["per_node_bytes_per_second_up_throughout_p50"]),
                    f(&j["per_node_bytes_per_second_up_throughout_p99"])
                ),
            ),
            (
                "  gossip p50/p99",
                format!("{} / {}", f(&j["gossip_bytes_per_second_p50"]), f(&j["gossip_bytes_per_second_p99"])),
            ),
            (
                "  index p50/p99",
                format!("{} / {}", f(&j["index_bytes_per_second_p50"]), f(&j["index_bytes_per_second_p99"])),
            ),
            (
                "slot map update ms p50/p99/max",
                format!(
                    "{} / {} / {}",
                    f(&j["slot_map_rebuild_ms_p50"]),
                    f(&j["slot_map_rebuild_ms_p99"]),
                    f(&j["slot_map_rebuild_ms_max"])
                ),
            ),
            (
                "view lag join ms p50/p99",
                format!("{} / {}", f(&m["view_lag_join_ms"]["p50"]), f(&m["view_lag_join_ms"]["p99"])),
            ),
            (
                "view lag leave ms p50/p99",
                format!("{} / {}", f(&m["view_lag_leave_ms"]["p50"]), f(&m["view_lag_leave_ms"]["p99"])),
            ),
            ("false downs / fallbacks", format!("{} / {}", f(&m["false_downs"]), f(&m["fallback_applies"]))),
            ("super nodes up min/max", format!("{} / {}", f(&m["live_min"]), f(&m["live_max"]))),
            (
                "churn starts/deaths/pauses",
                format!("{} / {} / {}", f(&j["churn"]["starts"]), f(&j["churn"]["deaths"]), f(&j["churn"]["pauses"])),
            ),
            ("devices online min/max", format!("{} / {}", f(&j["users"]["online_min"]), f(&j["users"]["online_max"]))),
            ("scenario", f(&j["scenario"]["name"])),
            ("events", f(&j["events"])),
            ("wall s / cpu s", format!("{} / {}", f(&j["wall_seconds"]), f(&j["cpu_seconds"]))),
            ("peak RSS bytes", f(&j["peak_rss_bytes"])),
        ];
        rows.iter().map(|(k, v)| format!("{k:<34} {v}\n")).collect()
    }

    /// The document without what differs between two runs of one seed (wall clock, CPU,
    /// memory, slot-map CPU).
    pub fn deterministic(&self) -> Value {
        let mut j = self.json.clone();
        if let Some(o) = j.as_object_mut() {
            o.retain(|k, _| {
                !matches!(k.as_str(), "wall_seconds" | "cpu_seconds" | "peak_rss_bytes") && !k.starts_with("slot_map_")
                    || k == "slot_map_rebuilds"
            });
        }
        j
    }
}
