//! Super-node membership over real sockets: 20 super nodes find each other through
//! gossip, notice 30% of them dying within seconds, and hosts hear of the whole cluster.

mod common;

use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

async fn wait_views(t: &common::TestNet, alive: &[usize], want: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let sizes: Vec<usize> = alive.iter().map(|i| t.net.nodes()[*i].members().len()).collect();
        if sizes.iter().all(|n| *n == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "views after {limit:?}: {sizes:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn twenty_super_nodes_converge_and_notice_the_dead() {
    let t = common::start(20, |c| c.supernode.probe_period_ms = 500).await;
    let all: Vec<usize> = (0..20).collect();
    let took = wait_views(&t, &all, 20, Duration::from_secs(30)).await;
    eprintln!("20 super nodes converged in {took:?}");

    // A host hears of the whole cluster, not only its own process's static list.
    host_login_sees(&t, 19).await;

    // Kill 30%.
    let dead = [3usize, 5, 8, 11, 13, 17];
    for i in dead {
        t.net.kill_node(i);
    }
    let alive: Vec<usize> = all.iter().copied().filter(|i| !dead.contains(i)).collect();
    let took = wait_views(&t, &alive, 14, Duration::from_secs(20)).await;
    eprintln!("6 dead super nodes noticed by all 14 survivors in {took:?}");
    assert!(took < Duration::from_secs(10), "noticed within seconds: {took:?}");

    let status = confab::telemetry::status();
    assert_eq!(status[&t.node(0)]["members"].as_array().unwrap().len(), 14, "{status}");
    let m = t.metrics().await;
    assert_eq!(t.metric(&m, "confab_cluster_members", &[&format!("node=\"{}\"", t.node(0))]), 14.0);
    t.net.stop().await;
}

async fn host_login_sees(t: &common::TestNet, others: usize) {
    confab::host::register(&t.settings(), &t.home("ana"), "ana", PW).await.unwrap();
    let s = confab::host::login(&t.settings(), &t.home("ana"), "ana", PW).await.unwrap();
    let cache = confab::host::cache::HostCache::load(&t.home("ana").cache_path());
    assert!(cache.supernodes().len() > others, "{} super nodes cached", cache.supernodes().len());
    s.logout().await;
}
