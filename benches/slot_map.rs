//! The slot map's cost at cluster sizes up to Skype's (~20,000 super nodes): a full build,
//! the incremental update after one member joins or one leaves, and ranking a lookup's
//! closest members (`index::slot::closest`, what a lookup ranks now) beside ranking every
//! member (`ranked`, what it ranked before). Medians of repeated runs, CPU time of this
//! one thread; the machine is shared, so compare the rows of one run.
//!
//! ```text
//! cargo bench --bench slot_map            # 1,000, 5,000 and 20,000 members
//! cargo bench --bench slot_map -- 20000   # one size
//! ```

use confab::crypto::KeyId;
use confab::index::slot::{NodeId, Slot, SlotMap, SlotSpace, closest, ranked};
use std::time::{Duration, Instant};

fn members(n: usize, salt: u64) -> Vec<NodeId> {
    (0..n as u64).map(|i| KeyId((i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt).to_be_bytes())).collect()
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let only: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let sizes: Vec<usize> = only.map_or_else(|| vec![1_000, 5_000, 20_000], |n| vec![n]);
    let space = SlotSpace::default();
    let r = confab::index::slot::REPLICAS_DEFAULT;
    println!("slots {}, replicas {r}; milliseconds, median", space.len());
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "members", "new", "update+1", "update-1", "closest 32", "ranked all"
    );
    for n in sizes {
        let m = members(n, 7);
        let builds = if n >= 10_000 { 3 } else { 5 };
        let full = median(builds, |_| {
            std::hint::black_box(SlotMap::new(space, r, &m));
        });
        let map = SlotMap::new(space, r, &m);
        let joiners = members(21, 99);
        let join = median(21, |i| {
            let mut next = m.clone();
            next.push(joiners[i]);
            std::hint::black_box(map.update(&next));
        });
        let leave = median(21, |i| {
            let mut next = m.clone();
            next.remove(i * (n / 21));
            std::hint::black_box(map.update(&next));
        });
        let near = median(101, |i| {
            std::hint::black_box(closest(Slot(i as u32), &m, 32));
        });
        let all = median(101, |i| {
            std::hint::black_box(ranked(Slot(i as u32), &m));
        });
        println!("{n:>8} {:>12} {:>12} {:>12} {:>14} {:>14}", ms(full), ms(join), ms(leave), ms(near), ms(all));
    }
}
