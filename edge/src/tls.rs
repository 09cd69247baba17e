//! TLS for viewers (RFC 8446, with rustls and its `ring` provider): the certificate and key files, read
//! and checked, and a certificate store that can be swapped while the edge runs.
//!
//! - **Loading** ([`load_certified_key`]) reads a PEM certificate chain and a PEM private key and checks
//!   that the key belongs to the first certificate, so that a wrong pair is refused when the config is
//!   checked rather than at the first handshake. Every error names the file and the reason.
//! - **Reloading** ([`CertStore`]): rustls asks the store for the certificate at every handshake, so a
//!   new pair put in place by [`CertStore::reload`] serves the next handshake, and connections already
//!   established keep the keys they agreed on. A pair that fails to load leaves the old one in force.
//! - **ALPN** (RFC 7301): the edge offers `h2` then `http/1.1`. HTTP/2 over TLS is negotiated only this
//!   way (RFC 9113 §3.3); a client that offers neither still gets HTTP/1.1.
//!
//! A leaf: it imports nothing from the crate, so that the config can check its files with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use thiserror::Error;

/// ALPN protocol ids (RFC 7301 §6, IANA registry), in the edge's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate, key or CA file that cannot be used, and why.
#[derive(Debug, Error)]
#[error("{}: {reason}", file.display())]
pub struct TlsError {
    /// Which of the files it is about (the same path may be given for both).
    pub role: Role,
    pub file: PathBuf,
    pub reason: String,
}

/// What a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Certificate,
    Key,
}

fn error(role: Role, file: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError { role, file: file.to_path_buf(), reason: reason.to_string() }
}

/// The crypto provider every TLS object of the edge uses: rustls' `ring` backend, chosen explicitly so
/// that no process-wide default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(role: Role, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| error(role, file, format!("cannot read: {e}")))
}

/// The certificates of a PEM file, in order; an error when there is none or one is not PEM.
pub fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(Role::Certificate, file)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(Role::Certificate, file, format!("not a valid PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(error(Role::Certificate, file, "no certificate in PEM (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certificates)
}

/// Reads and checks a certificate chain (`cert`, leaf first) and its private key (`key`).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let key_pem = read(Role::Key, key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| error(Role::Key, key, format!("no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| error(Role::Key, key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(error(Role::Key, key, format!("key does not match the certificate in {}", cert.display())))
        }
        // The provider cannot tell this key's public half: the handshake itself will tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(error(Role::Certificate, cert, format!("not a usable certificate: {e}"))),
    }
}

/// The certificate and key the TLS listener serves, swappable while it runs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    /// Read once per handshake (never on the request path); written on reload only.
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the pair for the first time.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let loaded = load_certified_key(cert, key)?;
        Ok(CertStore { cert: cert.to_path_buf(), key: key.to_path_buf(), current: RwLock::new(Arc::new(loaded)) })
    }

    /// Reads the files again. On success new handshakes use the new pair; on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load_certified_key(&self.cert, &self.key)?);
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is whole.
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The files the store reads, for log lines.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS server configuration of the viewers' listener: TLS 1.3 and 1.2 (rustls' safe defaults), no
/// client certificates, the certificate from `store` at each handshake, ALPN `h2` and `http/1.1`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        (cert, key)
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair(dir.path(), "a.example");
        load_certified_key(&cert, &key).expect("loads");
    }

    #[test]
    fn errors_name_the_file_and_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_a, key_a) = pair(dir.path(), "a.example");
        let (_, key_b) = pair(dir.path(), "b.example");

        let missing = dir.path().join("missing.pem");
        let err = load_certified_key(&missing, &key_a).expect_err("missing").to_string();
        assert!(err.contains("missing.pem") && err.contains("cannot read"), "{err}");

        let err = load_certified_key(&key_a, &key_a).expect_err("a key is no certificate").to_string();
        assert!(err.contains("a.example.key") && err.contains("no certificate in PEM"), "{err}");

        let err = load_certified_key(&cert_a, &cert_a).expect_err("a certificate is no key").to_string();
        assert!(err.contains("a.example.crt") && err.contains("no private key"), "{err}");

        let err = load_certified_key(&cert_a, &key_b).expect_err("mismatch").to_string();
        assert!(err.contains("b.example.key") && err.contains("does not match"), "{err}");
    }

    #[test]
    fn a_failed_reload_keeps_the_old_pair_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair(dir.path(), "a.example");
        let store = CertStore::load(&cert, &key).expect("loads");
        let before = store.current();

        std::fs::write(&key, "not a key").expect("break the key");
        assert!(store.reload().is_err());
        assert!(Arc::ptr_eq(&before, &store.current()), "the old pair stays");

        let (cert_b, key_b) = pair(dir.path(), "b.example");
        std::fs::copy(&cert_b, &cert).expect("new cert");
        std::fs::copy(&key_b, &key).expect("new key");
        store.reload().expect("reloads");
        assert_ne!(before.cert, store.current().cert, "the new pair serves");
    }
}
