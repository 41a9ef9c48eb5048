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
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

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
        (SslMode::VerifyFull, Some(roots)) => {
            Arc::new(LibpqVerifier::new(roots, HostCheck::Libpq)?)
        }
        (SslMode::VerifyCa, Some(roots)) => Arc::new(LibpqVerifier::new(roots, HostCheck::None)?),
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

/// What `verify-ca` and `verify-full` check of the host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostCheck {
    /// `verify-ca`: any host name.
    None,
    /// `verify-full`: the host reached, by libpq's rule ([`libpq_names_match`]).
    Libpq,
}

/// `verify-ca` and `verify-full` as libpq (that is, OpenSSL) decide them,
/// around the WebPKI verifier, whose verdict stands except in two cases
/// that libpq accepts and WebPKI does not:
///
/// - a name error (WebPKI checks the chain, dates and usage before the
///   name, so the rest was good): fine under `verify-ca`, and under
///   `verify-full` when libpq's rule, which falls back to the subject's
///   Common Name, finds the host;
/// - `CaUsedAsEndEntity` for a certificate byte-identical to a trusted root
///   (the self-signed certificate of the PostgreSQL manual, given as
///   `sslrootcert`): trusted as itself once its dates, usage and (under
///   `verify-full`) names are checked here.
///
/// The handshake's signatures are always checked by the WebPKI verifier.
#[derive(Debug)]
struct LibpqVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Vec<CertificateDer<'static>>,
    host_check: HostCheck,
}

impl LibpqVerifier {
    fn new(roots: &Roots, host_check: HostCheck) -> Result<LibpqVerifier, String> {
        Ok(LibpqVerifier {
            webpki: webpki(roots)?,
            roots: roots.certs.clone(),
            host_check,
        })
    }

    /// The verdict on a server certificate whose chain, dates and usage are
    /// good, by the host name as `sslmode` asks; `refusal` when it fails.
    fn check_host_name(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        refusal: rustls::Error,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let named = self.host_check == HostCheck::None
            || parse(end_entity).is_some_and(|cert| {
                PresentedNames::of(&cert)
                    .is_some_and(|names| libpq_names_match(&names, server_name))
            });
        if named {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refusal)
        }
    }

    /// The verdict on a server certificate that is one of the trusted roots
    /// itself, which WebPKI refuses because it is a CA's.
    fn trusted_as_root(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
        refusal: rustls::Error,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self
            .roots
            .iter()
            .any(|root| root.as_ref() == end_entity.as_ref())
        {
            return Err(refusal);
        }
        let Some(cert) = parse(end_entity) else {
            return Err(refusal);
        };
        let now = i64::try_from(now.as_secs())
            .ok()
            .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
            .ok_or(refusal)?;
        let refused = |why| Err(rustls::Error::InvalidCertificate(why));
        if now < cert.validity().not_before {
            return refused(CertificateError::NotValidYet);
        }
        if now > cert.validity().not_after {
            return refused(CertificateError::Expired);
        }
        let for_servers = match cert.extended_key_usage() {
            Ok(None) => true,
            Ok(Some(usage)) => usage.value.any || usage.value.server_auth,
            Err(_) => false,
        };
        if !for_servers {
            return refused(CertificateError::InvalidPurpose);
        }
        self.check_host_name(
            end_entity,
            server_name,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        )
    }
}

/// Whether WebPKI refused the server's certificate for being a CA's; rustls
/// passes that cause on as WebPKI's own error.
fn is_ca_used_as_end_entity(refusal: &rustls::Error) -> bool {
    match refusal {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The certificate's fields, or `None` when it cannot be parsed (WebPKI's
/// refusal then stands).
fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .ok()
        .map(|(_, cert)| cert)
}

/// The names a server certificate presents, as libpq reads them.
#[derive(Debug, Default, PartialEq, Eq)]
struct PresentedNames<'a> {
    /// The subjectAltName's dNSName entries.
    dns: Vec<&'a str>,
    /// The subjectAltName's iPAddress entries: 4 or 16 bytes each.
    ips: Vec<&'a [u8]>,
    /// The subject's first Common Name, when it is a string.
    common_name: Option<&'a str>,
}

impl<'a> PresentedNames<'a> {
    /// `None` when the subjectAltName extension is malformed or repeated.
    fn of(cert: &'a X509Certificate<'a>) -> Option<PresentedNames<'a>> {
        let mut names = PresentedNames {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok()),
            ..PresentedNames::default()
        };
        if let Some(san) = cert.subject_alternative_name().ok()? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.dns.push(dns),
                    GeneralName::IPAddress(ip) => names.ips.push(ip),
                    _ => {}
                }
            }
        }
        Some(names)
    }
}

/// libpq's rule for `verify-full`: the host matches a dNSName, or (for an
/// IP host) an iPAddress; only when the certificate has no subjectAltName
/// of the host's kind is the subject's Common Name compared instead. A
/// name with a NUL in it is refused outright, as libpq does.
fn libpq_names_match(names: &PresentedNames<'_>, server_name: &ServerName<'_>) -> bool {
    let (host, host_ip) = match server_name {
        ServerName::DnsName(dns) => (dns.as_ref().to_owned(), None),
        ServerName::IpAddress(ip) => {
            let ip = std::net::IpAddr::from(*ip);
            (ip.to_string(), Some(ip))
        }
        _ => return false,
    };
    let mut examined = names.dns.iter().chain(&names.common_name);
    if examined.any(|name| name.contains('\0')) {
        return false;
    }
    let ip_matches = |presented: &&[u8]| match host_ip {
        Some(std::net::IpAddr::V4(v4)) => *presented == v4.octets().as_slice(),
        Some(std::net::IpAddr::V6(v6)) => *presented == v6.octets().as_slice(),
        None => false,
    };
    if names.dns.iter().any(|name| name_matches(name, &host)) || names.ips.iter().any(ip_matches) {
        return true;
    }
    let has_san_of_host_kind = match host_ip {
        Some(_) => !names.ips.is_empty(),
        None => !names.dns.is_empty(),
    };
    !has_san_of_host_kind && names.common_name.is_some_and(|cn| name_matches(cn, &host))
}

/// One presented name against the host, as libpq compares them: equal but
/// for ASCII case, or a `*.` wildcard standing for exactly the first label.
fn name_matches(presented: &str, host: &str) -> bool {
    if presented.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = presented.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || suffix.len() < 2 || host.len() <= suffix.len() {
        return false;
    }
    let (label, host_suffix) = host.as_bytes().split_at(host.len() - suffix.len());
    host_suffix.eq_ignore_ascii_case(suffix.as_bytes()) && !label.contains(&b'.')
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verdict {
            Err(
                refusal @ rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
            ) => self.check_host_name(end_entity, server_name, refusal),
            Err(refusal) if is_ca_used_as_end_entity(&refusal) => {
                self.trusted_as_root(end_entity, server_name, now, refusal)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_owned()).unwrap()
    }

    fn names<'a>(
        dns: &[&'a str],
        ips: &[&'a [u8]],
        common_name: Option<&'a str>,
    ) -> PresentedNames<'a> {
        PresentedNames {
            dns: dns.to_vec(),
            ips: ips.to_vec(),
            common_name,
        }
    }

    #[test]
    fn a_presented_name_matches_as_libpq_compares() {
        for (presented, host, matches) in [
            ("db.example.com", "db.example.com", true),
            ("DB.Example.COM", "db.example.com", true),
            ("db.example.com", "db.example.org", false),
            ("*.example.com", "db.example.com", true),
            ("*.example.com", "x.example.com", true),
            ("*.EXAMPLE.com", "db.example.com", true),
            // The wildcard stands for exactly one whole first label.
            ("*.example.com", "a.db.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("db*.example.com", "db1.example.com", false),
            ("*example.com", "dbexample.com", false),
            ("*.", "db.", false),
            ("*", "db", false),
            ("*.é.com", "x.é.com", true),
        ] {
            assert_eq!(
                name_matches(presented, host),
                matches,
                "{presented} vs {host}"
            );
        }
    }

    #[test]
    fn the_common_name_counts_only_without_a_subject_alt_name_of_the_hosts_kind() {
        let localhost = host("localhost");
        let loopback = host("127.0.0.1");
        let v4: &[u8] = &[127, 0, 0, 1];
        for (presented, host, matches) in [
            (names(&[], &[], Some("localhost")), &localhost, true),
            (names(&[], &[], Some("elsewhere")), &localhost, false),
            (names(&[], &[], None), &localhost, false),
            (
                names(&["elsewhere"], &[], Some("localhost")),
                &localhost,
                false,
            ),
            (
                names(&["elsewhere", "localhost"], &[], Some("x")),
                &localhost,
                true,
            ),
            // An iPAddress entry is not of a DNS host's kind.
            (names(&[], &[v4], Some("localhost")), &localhost, true),
            (names(&[], &[v4], None), &loopback, true),
            (
                names(&[], &[&[127, 0, 0, 2]], Some("127.0.0.1")),
                &loopback,
                false,
            ),
            // For an IP host, a dNSName does not rule the Common Name out.
            (
                names(&["localhost"], &[], Some("127.0.0.1")),
                &loopback,
                true,
            ),
            (
                names(&["localhost"], &[], Some("localhost")),
                &loopback,
                false,
            ),
            (
                names(&[], &[], Some("*.localhost")),
                &host("db.localhost"),
                true,
            ),
            // A name with a NUL in it refuses the whole certificate.
            (
                names(&["x\0.evil", "localhost"], &[], None),
                &localhost,
                false,
            ),
            (names(&[], &[], Some("localhost\0.evil")), &localhost, false),
        ] {
            assert_eq!(
                libpq_names_match(&presented, host),
                matches,
                "{presented:?} vs {host:?}"
            );
        }
    }

    #[test]
    fn names_are_read_from_the_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["db.example".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 7].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn.example");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        let cert = parse(&der).unwrap();
        let v4: &[u8] = &[10, 0, 0, 7];
        assert_eq!(
            PresentedNames::of(&cert).unwrap(),
            names(&["db.example"], &[v4], Some("cn.example"))
        );
    }

    /// A self-signed CA certificate for `localhost`, as `openssl req -x509`
    /// makes, restricted to `usages` when there are any.
    fn self_signed_ca(usages: Vec<rcgen::ExtendedKeyUsagePurpose>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = usages;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verdict(
        root: &CertificateDer<'static>,
        served: &CertificateDer<'static>,
        host_check: HostCheck,
        host_name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = Roots {
            origin: "the test root".to_owned(),
            certs: vec![root.clone()],
        };
        LibpqVerifier::new(&roots, host_check)
            .unwrap()
            .verify_server_cert(served, &[], &host(host_name), &[], UnixTime::now())
    }

    #[test]
    fn a_root_served_as_the_certificate_is_trusted_for_servers_and_its_names() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let root = self_signed_ca(vec![]);
        assert!(verdict(&root, &root, HostCheck::Libpq, "localhost").is_ok());
        assert!(verdict(&root, &root, HostCheck::None, "elsewhere").is_ok());
        let refusal = verdict(&root, &root, HostCheck::Libpq, "elsewhere").unwrap_err();
        assert_eq!(
            refusal,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        );

        let for_servers = self_signed_ca(vec![ServerAuth]);
        assert!(verdict(&for_servers, &for_servers, HostCheck::Libpq, "localhost").is_ok());
        let for_clients = self_signed_ca(vec![ClientAuth]);
        let refusal = verdict(&for_clients, &for_clients, HostCheck::None, "localhost");
        assert_eq!(
            refusal.unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
        );

        // A CA's certificate that is not itself a root stays refused.
        let other = self_signed_ca(vec![]);
        let refusal = verdict(&root, &other, HostCheck::None, "localhost").unwrap_err();
        assert!(is_ca_used_as_end_entity(&refusal), "{refusal:?}");
    }
}
