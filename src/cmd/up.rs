//! `confab up`.

use confab::config::Config;
use confab::network::{self, UpOptions};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for keys, credentials, accounts and host.toml.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Address for every listener (e.g. an address inside a test namespace).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// First port: login server on it, super node i on base+3+10i, +4 and +5 (gossip); 0 for ephemeral ports.
    #[arg(long, default_value_t = 33030)]
    base_port: u16,
    /// How many super nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    supernodes: u16,
    /// Metrics endpoint (default: the bind address, port 9464; "off" to disable).
    #[arg(long)]
    metrics: Option<String>,
    /// RSA key size for keys generated on first start.
    #[arg(long, default_value_t = 2048)]
    key_bits: usize,
    /// Print the addresses as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args, config: Config) -> anyhow::Result<ExitCode> {
    let metrics = match a.metrics.as_deref() {
        Some("off") => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| anyhow::anyhow!("--metrics {s}: {e}"))?),
        None => Some(config.metrics.listen.unwrap_or(SocketAddr::new(a.bind, 9464))),
    };
    let net = network::up(UpOptions {
        data: a.data,
        bind: a.bind,
        base_port: a.base_port,
        supernodes: a.supernodes as usize,
        metrics,
        key_bits: a.key_bits,
        config,
        name_prefix: "sn".into(),
    })
    .await?;
    let i = &net.info;
    if a.json {
        println!("{}", serde_json::to_string(i)?);
    } else {
        println!("confab {} — local network up", confab::VERSION);
        println!("  login server   tcp {}", i.login_server);
        for n in &i.supernodes {
            let probe = n.probe_udp.map(|p| format!(", nat probe udp {p}")).unwrap_or_default();
            println!(
                "  super node {:<4} udp+stun {}, tcp {}{probe}",
                n.name,
                n.udp,
                n.tcp.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ")
            );
        }
        if let Some(m) = &i.metrics {
            println!("  metrics        {m} (login server and every super node)");
        }
        println!("  data           {}", i.data.display());
        println!();
        println!("In another terminal:");
        println!("  confab host --config {} register alice", i.host_config.display());
        println!("  confab host --config {} login alice", i.host_config.display());
        println!("Ctrl-C stops the network.");
    }
    super::terminated().await;
    net.stop().await;
    Ok(ExitCode::SUCCESS)
}
