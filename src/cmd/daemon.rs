//! `confab login-server` and `confab supernode`.

use confab::config::Config;
use confab::login::LoginServer;
use confab::telemetry::MetricsServer;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// TCP listen address (overrides login_server.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Metrics endpoint (overrides metrics.listen).
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SupernodeArgs {
    /// Metrics endpoint (overrides metrics.listen); also serves /status.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    #[command(subcommand)]
    action: Option<SupernodeAction>,
}

#[derive(Debug, clap::Subcommand)]
enum SupernodeAction {
    /// Show a running super-node process: each node's cluster view and connected hosts.
    Status {
        /// The process's metrics endpoint (default: metrics.listen).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Print the JSON document as it is.
        #[arg(long)]
        json: bool,
    },
}

async fn status(addr: SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no answer within 5 s"))?
        .map_err(|e| anyhow::anyhow!("{addr}: {e} (is a super node running with metrics.listen = {addr}?)"))?;
    s.write_all(format!("GET /status HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut text)).await??;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(body).map_err(|e| anyhow::anyhow!("{addr}/status: {e}"))?;
    if json {
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    for (name, node) in doc.as_object().into_iter().flatten() {
        let members = node["members"].as_array().cloned().unwrap_or_default();
        println!(
            "{name}  node {}  hosts connected {}  cluster members alive {}  revocation list version {}",
            node["node_id"].as_str().unwrap_or("?"),
            node["hosts_connected"],
            members.len(),
            node["revocation_list_version"]
        );
        for m in members {
            println!(
                "    {:<12} gossip {:<22} udp {}",
                m["name"].as_str().unwrap_or("?"),
                m["gossip"].as_str().unwrap_or("?"),
                m["udp"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn start_metrics(
    addr: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    confab::telemetry::metrics_handle();
    let m = MetricsServer::bind(addr).await?;
    tracing::info!(url = %format!("http://{}/metrics", m.addr()), "metrics endpoint");
    Ok(Some(tokio::spawn(m.run(shutdown.clone()))))
}

pub async fn login_server(a: LoginArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    if let Some(l) = a.listen {
        config.login_server.listen = l;
    }
    let shutdown = CancellationToken::new();
    let metrics = start_metrics(a.metrics.or(config.metrics.listen), &shutdown).await?;
    let cfg = config.login_server.clone();
    let service = Arc::new(tokio::task::spawn_blocking(move || confab::network::login_service(&cfg)).await??);
    let server = LoginServer::bind(
        service,
        config.login_server.listen,
        config.login_server.public_addr,
        config.login_server.connection_limits(),
    )
    .await?;
    let task = actix_rt::spawn(server.run(shutdown.clone()));
    super::terminated().await;
    shutdown.cancel();
    let _ = task.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn supernode(a: SupernodeArgs, config: Config) -> anyhow::Result<ExitCode> {
    if let Some(SupernodeAction::Status { metrics, json }) = a.action {
        let addr = metrics
            .or(config.metrics.listen)
            .ok_or_else(|| anyhow::anyhow!("metrics.listen: not set; pass --metrics ADDR"))?;
        return status(addr, json).await;
    }
    if config.supernode.nodes.is_empty() {
        anyhow::bail!("supernode.nodes: no super node configured (see config/confab.toml)");
    }
    let shutdown = CancellationToken::new();
    let metrics = start_metrics(a.metrics.or(config.metrics.listen), &shutdown).await?;
    let nodes = confab::network::start_supernodes(&config.supernode, &shutdown).await?;
    super::terminated().await;
    shutdown.cancel();
    for n in nodes {
        n.stopped().await;
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(ExitCode::SUCCESS)
}
