//! `confab keygen`.

use anyhow::Context;
use confab::crypto::{PrivateKey, PublicKey};
use confab::keygen;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A login server's key pair: OUT.key.pem (0600) and OUT.pub.pem (ship the latter to hosts).
    Login {
        /// Path stem of the files.
        #[arg(long)]
        out: PathBuf,
        /// RSA modulus size (2048 to 4096).
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// A super node's key pair and its credential, signed by a login key.
    Supernode {
        /// The super node's name.
        #[arg(long)]
        name: String,
        /// The login server's private key.
        #[arg(long)]
        login_key: PathBuf,
        /// Path stem: OUT.key.pem, OUT.pub.pem, OUT.cred.
        #[arg(long)]
        out: PathBuf,
        /// Credential validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// RSA modulus size (2048 to 4096).
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// A cluster secret: every super node of one cluster needs the same file (mode 0600).
    Cluster {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an existing super-node public key (made on the super node's own machine).
    Certify {
        /// The super node's name.
        #[arg(long)]
        name: String,
        /// The login server's private key.
        #[arg(long)]
        login_key: PathBuf,
        /// The super node's public key (PEM).
        #[arg(long)]
        public_key: PathBuf,
        /// Where to write the credential.
        #[arg(long)]
        out: PathBuf,
        /// Credential validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Login { out, bits } => {
            let key = keygen::generate(&out, bits)?;
            let (private, public) = keygen::key_paths(&out);
            println!(
                "login key {} ({} bits)\n  private {}\n  public  {}",
                key.public().id(),
                key.public().bits(),
                private.display(),
                public.display()
            );
        }
        Command::Supernode { name, login_key, out, days, bits } => {
            let login = PrivateKey::read_pem_file(&login_key)
                .with_context(|| format!("--login-key {}", login_key.display()))?;
            let key = keygen::generate(&out, bits)?;
            let cred = keygen::certify_supernode(&login, &name, key.public(), days, confab::unix_now());
            let cred_path = PathBuf::from(format!("{}.cred", out.display()));
            keygen::write_credential(&cred_path, &cred)?;
            let (private, public) = keygen::key_paths(&out);
            println!(
                "super node {name}: key {} signed by login key {}\n  private    {}\n  public     {}\n  credential {}",
                key.public().id(),
                login.public().id(),
                private.display(),
                public.display(),
                cred_path.display()
            );
        }
        Command::Cluster { out } => {
            keygen::generate_cluster_secret(&out)?;
            println!(
                "cluster secret written to {} (copy it to every super node: supernode.cluster_secret)",
                out.display()
            );
        }
        Command::Certify { name, login_key, public_key, out, days } => {
            let login = PrivateKey::read_pem_file(&login_key)
                .with_context(|| format!("--login-key {}", login_key.display()))?;
            let public = PublicKey::read_pem_file(&public_key)
                .with_context(|| format!("--public-key {}", public_key.display()))?;
            let cred = keygen::certify_supernode(&login, &name, &public, days, confab::unix_now());
            keygen::write_credential(&out, &cred)?;
            println!("credential for {name} ({}) written to {}", public.id(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
