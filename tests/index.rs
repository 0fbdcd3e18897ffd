//! The Global Index over real sockets: 20 super nodes gossiping, 200 hosts publishing
//! signed entries and finding each other by limited multicast, then 30% of the super
//! nodes crashing.

mod common;

use confab::index::{Profile, Status};
use confab::supernode::index_router::{Holds, ReplicasOf};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";
const SUPERNODES: usize = 20;
const HOSTS: usize = 200;

#[actix_rt::test]
async fn hosts_find_each_other_through_twenty_super_nodes_and_survive_30_percent_dying() {
    let t = common::start(SUPERNODES, |c| {
        c.supernode.probe_period_ms = 1000;
        c.supernode.index.anti_entropy_secs = 10;
    })
    .await;
    let started = Instant::now();
    while t.net.nodes().iter().any(|n| n.members().len() < SUPERNODES) {
        assert!(started.elapsed() < Duration::from_secs(30), "cluster did not converge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Hosts spread over the super nodes (each bootstraps from a different one).
    let mut sessions = Vec::new();
    let clock = Instant::now();
    for i in 0..HOSTS {
        let user = format!("user{i:03}");
        let mut s = t.settings();
        s.ladder.bootstrap.rotate_left(i % SUPERNODES);
        let home = t.home(&user);
        confab::host::register(&s, &home, &user, PW).await.unwrap();
        let session = confab::host::login(&s, &home, &user, PW).await.unwrap();
        sessions.push((user, session));
    }
    eprintln!("{HOSTS} hosts registered, logged in and published in {:?}", clock.elapsed());

    // Every host looks up 10 others; together they look up every user.
    let clock = Instant::now();
    let mut asked = Vec::new();
    for (i, (me, session)) in sessions.iter_mut().enumerate() {
        for k in 1..=10 {
            let whom = format!("user{:03}", (i + k * 17) % HOSTS);
            let found = session.find(&whom).await.unwrap().unwrap_or_else(|| panic!("{me} cannot find {whom}"));
            assert_eq!(found.user, whom);
            assert_eq!(found.status, Status::Online);
            asked.push(found.asked);
        }
    }
    asked.sort_unstable();
    eprintln!(
        "{} lookups in {:?}; super nodes asked: median {}, max {}",
        asked.len(),
        clock.elapsed(),
        asked[asked.len() / 2],
        asked[asked.len() - 1]
    );
    assert!(asked[asked.len() / 2] <= 4, "a healthy lookup asks 4 super nodes");

    // User search by profile words, case- and accent-insensitive.
    let jaan = Profile {
        display_name: "Jaan Tallinn".into(),
        city: "Tallinn".into(),
        country: "Eesti".into(),
        ..Default::default()
    };
    let zoe = Profile { display_name: "Zoë Ångström".into(), city: "TALLINN".into(), ..Default::default() };
    sessions[10].1.publish(Status::Online, &jaan).await.unwrap();
    sessions[20].1.publish(Status::Away, &zoe).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names = |v: Vec<confab::host::Found>| {
        let mut n: Vec<String> = v.into_iter().map(|f| f.user).collect();
        n.sort();
        n
    };
    assert_eq!(names(sessions[0].1.search("jaan TALLINN", 10).await.unwrap()), ["user010"]);
    let z = sessions[0].1.search("zoe angstrom", 10).await.unwrap();
    assert_eq!(z.len(), 1);
    assert_eq!((z[0].user.as_str(), z[0].status), ("user020", Status::Away));
    assert_eq!(names(sessions[3].1.search("tallinn", 10).await.unwrap()), ["user010", "user020"]);
    assert_eq!(names(sessions[3].1.search("tallinn", 1).await.unwrap()).len(), 1, "the limit holds");
    assert!(sessions[0].1.search("no such words", 10).await.unwrap().is_empty());

    // An unknown user is not found, after asking everyone.
    assert!(sessions[0].1.find("nobody-at-all").await.unwrap().is_none());

    // Crash 30% of the super nodes.
    let dead = [2usize, 5, 7, 11, 13, 18];
    for i in dead {
        t.net.kill_node(i);
    }
    let dead_names: Vec<String> = dead.iter().map(|i| format!("sn{}", i + 1)).collect();
    let started = Instant::now();
    while t
        .net
        .nodes()
        .iter()
        .enumerate()
        .any(|(i, n)| !dead.contains(&i) && n.members().len() != SUPERNODES - dead.len())
    {
        let sizes: Vec<usize> = t.net.nodes().iter().map(|n| n.members().len()).collect();
        assert!(started.elapsed() < Duration::from_secs(30), "survivors did not notice: {sizes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the 14 survivors noticed the 6 crashed super nodes in {:?}", started.elapsed());
    // Re-replication: the new replica set of every key fills up from the survivors, so
    // each key is again held by R = 10 live super nodes.
    let live: Vec<usize> = (0..SUPERNODES).filter(|i| !dead.contains(i)).collect();
    let started = Instant::now();
    loop {
        let mut short = Vec::new();
        for u in (0..HOSTS).step_by(7) {
            let key = format!("user{u:03}");
            let router = t.net.nodes()[live[0]].index.clone().unwrap();
            let replicas = router.send(ReplicasOf(key.clone())).await.unwrap();
            assert_eq!(replicas.len(), 10);
            let mut holders = 0;
            for i in &live {
                let n = &t.net.nodes()[*i];
                if replicas.contains(&n.identity.key.public().id())
                    && n.index.clone().unwrap().send(Holds(key.clone())).await.unwrap()
                {
                    holders += 1;
                }
            }
            if holders < 10 {
                short.push((key, holders));
            }
        }
        if short.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not re-replicated after 20 s: {short:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("every sampled key back on its 10 replicas {:?} after the survivors noticed", started.elapsed());

    // Hosts on surviving super nodes still find everyone.
    let mut checked = 0;
    for (i, (_, s)) in sessions.iter_mut().enumerate() {
        if dead_names.contains(&s.report.supernode) || i % 4 != 0 {
            continue;
        }
        for k in 0..HOSTS / 10 {
            let whom = format!("user{:03}", (i + k * 7) % HOSTS);
            let found = s.find(&whom).await.unwrap();
            assert!(found.is_some(), "{whom} lost after 30% of the super nodes died");
            checked += 1;
        }
    }
    assert!(checked >= 200, "only {checked} lookups after the crash");
    eprintln!("{checked} lookups after 6 of 20 super nodes crashed: all found");

    // Logged-out users are found offline, with their last-seen time.
    let (user, s) = sessions.pop().unwrap();
    s.logout().await;
    let found = sessions[1].1.find(&user).await.unwrap().expect("found after logout");
    assert_eq!(found.status, Status::Offline);
    assert!(found.last_seen + 60 > confab::unix_now());
    t.net.stop().await;
}
