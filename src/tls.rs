//! The one TLS crypto provider of the process.
//!
//! Both TLS clients (the Kubernetes API client and the registry client used by
//! `verify`) use rustls. The build links exactly one provider, *ring*, and
//! installs it as the process default before either client is built, so no
//! client falls back to a provider chosen by a dependency's feature flags.

use std::sync::Once;

static INSTALL: Once = Once::new();

/// Installs ring as the process-wide rustls provider; idempotent and cheap.
pub fn install_crypto_provider() {
    INSTALL.call_once(|| {
        // Fails only when another provider was installed first, which is
        // then the one used: nothing to do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A Kubernetes client for `config`, with the crypto provider installed.
pub fn kube_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    install_crypto_provider();
    kube::Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_the_installed_provider() {
        install_crypto_provider();
        install_crypto_provider();
        let p = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(p), names(&ring));
    }

    #[test]
    fn a_kube_client_builds_for_an_https_server() {
        let cfg = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Building the client builds the rustls config; without a provider
        // this panics.
        rt.block_on(async { kube_client(cfg).expect("client builds") });
    }
}
