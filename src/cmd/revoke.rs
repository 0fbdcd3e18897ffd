//! `confab revoke`: revokes a credential at the login server (run on its machine).

use confab::config::Config;
use confab::crypto::CredentialKind;
use std::process::ExitCode;

/// Which kind of credential a bare key id names.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// A super node's.
    Supernode,
    /// A host's.
    Host,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A super node of supernode.nodes by name, a credential file, or a key id (16 hex digits).
    target: String,
    /// With a key id: the kind of credential it certifies.
    #[arg(long, value_enum, default_value = "supernode")]
    kind: Kind,
    /// With a key id: a name for the list's readers.
    #[arg(long, default_value = "")]
    subject: String,
}

pub fn run(a: Args, config: Config) -> anyhow::Result<ExitCode> {
    use confab::login::revocations;
    let kind = match a.kind {
        Kind::Supernode => CredentialKind::SuperNode,
        Kind::Host => CredentialKind::Host,
    };
    let target = revocations::resolve(&a.target, kind, &a.subject, &config)?;
    let (entry, version) = revocations::revoke(&config.login_server, &target, confab::unix_now())?;
    say!(
        "revoked the {:?} credential of {:?} (key {}) until {}; revocation list version {version}",
        entry.kind,
        entry.subject,
        entry.key,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.expires_at)),
    );
    say!(
        "super nodes fetch it within supernode.revocation.fetch_interval_secs ({} s) and spread it to each other; hosts get it at their next login",
        config.supernode.revocation.fetch_interval_secs
    );
    Ok(ExitCode::SUCCESS)
}
