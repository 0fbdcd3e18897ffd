//! Key files and super-node credentials, as `confab keygen` and `confab up` make them.

use crate::crypto::credential::{Claims, Credential, CredentialKind};
use crate::crypto::{PrivateKey, PublicKey};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The private and public key file names for a stem: `STEM.key.pem`, `STEM.pub.pem`.
pub fn key_paths(stem: &Path) -> (PathBuf, PathBuf) {
    let s = stem.as_os_str().to_string_lossy();
    (PathBuf::from(format!("{s}.key.pem")), PathBuf::from(format!("{s}.pub.pem")))
}

/// Generates a key pair and writes it under `stem` (private key mode 0600).
pub fn generate(stem: &Path, bits: usize) -> anyhow::Result<PrivateKey> {
    let key = PrivateKey::generate(bits)?;
    let (private, public) = key_paths(stem);
    key.write_pem_files(&private, &public)?;
    Ok(key)
}

/// Loads the key pair under `stem`, generating it if it does not exist yet.
pub fn load_or_generate(stem: &Path, bits: usize) -> anyhow::Result<PrivateKey> {
    let (private, _) = key_paths(stem);
    if private.exists() {
        return PrivateKey::read_pem_file(&private).with_context(|| format!("reading {}", private.display()));
    }
    tracing::info!(path = %private.display(), bits, "generating RSA key pair");
    generate(stem, bits)
}

/// Signs a super node's public key with a login key: the super node's credential.
pub fn certify_supernode(login: &PrivateKey, name: &str, public_key: &PublicKey, days: u64, now: u64) -> Credential {
    Credential::issue(
        Claims {
            kind: CredentialKind::SuperNode,
            subject: name.to_owned(),
            public_key: public_key.clone(),
            issued_at: now,
            expires_at: now + days * 86_400,
            serial: crate::crypto::random::u64(),
        },
        login,
    )
}

/// Writes a new random cluster secret (hex, mode 0600).
pub fn generate_cluster_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    let secret: [u8; 32] = crate::crypto::random::bytes();
    let text =
        format!("# confab cluster secret: every super node of the cluster needs this file\n{}\n", hex::encode(secret));
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

/// Reads a cluster secret file.
pub fn read_cluster_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    let bytes = hex::decode(line).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.with_context(|| format!("{}: not a cluster secret (64 hex digits)", path.display()))
}

/// Writes a credential file: a comment line, then the credential in hex.
pub fn write_credential(path: &Path, c: &Credential) -> anyhow::Result<()> {
    let text = format!(
        "# confab credential: {:?} {:?}, issued by login key {}, expires {}\n{}\n",
        c.kind,
        c.subject,
        c.issuer,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.expires_at)),
        hex::encode(c.encode())
    );
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

/// Reads a credential file written by [`write_credential`].
pub fn read_credential(path: &Path) -> anyhow::Result<Credential> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let hex_line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    let bytes = hex::decode(hex_line).with_context(|| format!("{}: not a credential file", path.display()))?;
    Credential::decode(&bytes).with_context(|| format!("{}: malformed credential", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::credential::TrustedKeys;
    use crate::crypto::keys::tests::test_key;

    #[test]
    fn credential_file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let login = test_key(0);
        let sn = test_key(1);
        let c = certify_supernode(&login, "sn1", sn.public(), 365, 1_000_000);
        let p = d.path().join("sn1.cred");
        write_credential(&p, &c).unwrap();
        let back = read_credential(&p).unwrap();
        assert_eq!(back, c);
        back.verify(&TrustedKeys::new(vec![login.public().clone()]), CredentialKind::SuperNode, 1_000_001).unwrap();
    }
}
