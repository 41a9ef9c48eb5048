//! TLS for both of the target's outside connections: PostgreSQL (`sslmode`
//! as libpq reads it) and an `https://` source. One crate does both: rustls
//! with its `ring` provider, so the build needs no OpenSSL headers and no
//! cmake, only the C compiler Rust already needs.
//!
//! What is trusted is decided when the configuration is read, so a missing
//! or unreadable certificate file stops start-up instead of failing every
//! connection later.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// `sslmode`, with libpq's meaning of each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS or nothing, without checking the certificate.
    Require,
    /// TLS, the certificate signed by a trusted root; any host name.
    VerifyCa,
    /// TLS, the certificate signed by a trusted root and issued for the host.
    VerifyFull,
}

impl SslMode {
    pub const ACCEPTED: &'static str = "disable, prefer, require, verify-ca, verify-full";

    pub fn parse(text: &str) -> Option<SslMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What the `postgres` crate itself is told: it knows whether to ask for
    /// TLS, not how to check the certificate (the verifier below does that).
    pub fn for_postgres(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

/// Trusted roots: the certificates of a PEM file, or the system's.
#[derive(Clone, Debug)]
pub struct Roots {
    /// Where they came from, for messages: a path or `the system's roots`.
    pub origin: String,
    certs: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// Every certificate of a PEM file; an error (saying why) when the file
    /// cannot be read or holds none.
    pub fn from_pem_file(path: &Path) -> Result<Roots, String> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("{shown} is not a PEM certificate file: {err:?}"))?;
        let roots = Roots {
            origin: shown.to_string(),
            certs,
        };
        match roots.store() {
            Ok(_) => Ok(roots),
            Err(why) => Err(why),
        }
    }

    /// The system's trusted roots (`/etc/ssl/certs` on Debian, or
    /// `SSL_CERT_FILE`); an error when there are none.
    pub fn system() -> Result<Roots, String> {
        let loaded = rustls_native_certs::load_native_certs();
        let roots = Roots {
            origin: "the system's trusted roots".to_owned(),
            certs: loaded.certs,
        };
        roots
            .store()
            .map(|_| roots.clone())
            .map_err(|_| "no trusted roots found in the system's store (is the ca-certificates package installed?)".to_owned())
    }

    fn store(&self) -> Result<Arc<RootCertStore>, String> {
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(self.certs.iter().cloned());
        if added == 0 {
            return Err(format!("{} holds no usable CA certificate", self.origin));
        }
        Ok(Arc::new(store))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS set-up failed: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(roots: &Roots) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(roots.store()?, provider())
        .build()
        .map_err(|err| format!("{}: {err}", roots.origin))
}

/// The client configuration for PostgreSQL under `mode`. `roots` is needed
/// by (and only used by) `verify-ca` and `verify-full`.
pub fn postgres_client_config(
    mode: SslMode,
    roots: Option<&Roots>,
) -> Result<ClientConfig, String> {
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => webpki(roots)?,
        (SslMode::VerifyCa, Some(roots)) => Arc::new(ChainOnly(webpki(roots)?)),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!("sslmode={} needs trusted roots", mode.as_str()))
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => {
            Arc::new(AnyCertificate(provider()))
        }
    };
    client_config(verifier)
}

/// How ureq checks an `https://` source: against `roots`, with ring.
pub fn ureq_tls_config(roots: &Roots) -> ureq::tls::TlsConfig {
    let certs: Vec<ureq::tls::Certificate<'static>> = roots
        .certs
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(provider())
        .build()
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not
/// checked. The WebPKI verifier checks the chain before the name, so a
/// name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encryption without authentication, as libpq
/// does. The handshake's signatures are still checked, so the session key
/// belongs to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
