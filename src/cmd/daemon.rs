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
pub struct SupernodeArgs {
    /// Metrics endpoint (overrides metrics.listen).
    #[arg(long)]
    metrics: Option<SocketAddr>,
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
        config.login_server.connections_max,
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
