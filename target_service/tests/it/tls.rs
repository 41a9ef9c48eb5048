//! TLS end to end: a throwaway PostgreSQL cluster with `ssl = on` that
//! accepts only TLS connections (`hostssl`), with a CA and a server
//! certificate made here, and an HTTPS source served by rustls.
//!
//! The cluster is made by `scripts/lib/pg.sh`, which installs PostgreSQL's
//! server programs where they are missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use target_service::{connect, App, Config, Running};

use crate::common::{self, get, last_error, profile, wait_until, OwnCluster, TestDb};

/// A CA, and a server certificate it signed for `localhost` only.
struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
    server_der: CertificateDer<'static>,
    server_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

/// A server certificate and its key, PEM.
struct ServerCert {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "profile-sync test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
            server_der: server_cert.der().clone(),
            server_pem: server_cert.pem(),
            key_der: server_key.serialize_der(),
            key_pem: server_key.serialize_pem(),
        }
    }

    /// A server certificate signed by the CA, with `dns_names` as its
    /// subjectAltName (none: no such extension) and `common_name` as its
    /// subject's CN.
    fn issue(&self, dns_names: &[&str], common_name: &str) -> ServerCert {
        let names: Vec<String> = dns_names.iter().map(|name| name.to_string()).collect();
        let mut server = CertificateParams::new(names).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = server.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A CA that signed nothing here.
    fn other_ca_pem() -> String {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "some other CA");
        ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway cluster (`scripts/lib/pg.sh`, through [`OwnCluster`]) turned
/// to speak only TLS: `ssl = on` with `pki`'s server certificate, and
/// `hostssl` the only rule of `pg_hba.conf`.
fn tls_cluster(pki: &Pki) -> OwnCluster {
    tls_cluster_serving(&ServerCert {
        cert_pem: pki.server_pem.clone(),
        key_pem: pki.key_pem.clone(),
    })
}

/// [`tls_cluster`] with `server` as the server's certificate.
fn tls_cluster_serving(server: &ServerCert) -> OwnCluster {
    let cluster = OwnCluster::start("tls");
    cluster.run(
        r#"data=$PG_THROWAWAY_DATA &&
        printf '%s\n' "ssl = on" "ssl_cert_file = 'server.crt'" "ssl_key_file = 'server.key'" \
          >>"$data/postgresql.conf" &&
        echo 'hostssl all all 127.0.0.1/32 trust' >"$data/pg_hba.conf""#,
    );
    serve(&cluster, server);
    cluster
}

/// Restarts `cluster` presenting `server` as its certificate.
fn serve(cluster: &OwnCluster, server: &ServerCert) {
    let files = TempDir::new("profile-sync-tls-pg");
    let cert = files.write("server.crt", &server.cert_pem);
    let key = files.write("server.key", &server.key_pem);
    // The key must belong to the server's user and be private to it.
    cluster.run(&format!(
        r#"data=$PG_THROWAWAY_DATA &&
        install -m 600 '{cert}' "$data/server.crt" && install -m 600 '{key}' "$data/server.key" &&
        if [[ $EUID -eq 0 ]]; then chown postgres: "$data/server.crt" "$data/server.key"; fi &&
        pg_throwaway_restart_server >&2"#
    ));
}

fn tls_url(cluster: &OwnCluster, host: &str, query: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/postgres?{query}",
        cluster.port
    )
}

fn config(vars: &[(&str, &str)]) -> Config {
    let vars: std::collections::HashMap<String, String> = [
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("SYNC_INTERVAL", "0.2"),
        ("HTTP_TIMEOUT_SECS", "2"),
        ("SHUTDOWN_TIMEOUT_SECS", "5"),
    ]
    .iter()
    .chain(vars)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Config::from_lookup(|name| vars.get(name).cloned()).expect("test config is valid")
}

fn page() -> serde_json::Value {
    json!([
        profile(1, "2025-01-01T00:00:00Z"),
        profile(2, "2025-01-01T00:00:01Z")
    ])
}

fn users(config: &Config) -> i64 {
    connect(&config.database)
        .and_then(|mut client| client.query_one("SELECT count(*) FROM users", &[]))
        .map(|row| row.get(0))
        .unwrap_or(-1)
}

/// Starts a target with `database_url` and waits until it has given its
/// verdict: rows synced, or an error recorded.
fn target_against(database_url: &str, source: &str) -> (Config, Running) {
    let config = config(&[
        ("DATABASE_URL", database_url),
        ("SOURCE_SERVICE_URL", source),
    ]);
    let running = App::start(config.clone()).expect("target starts");
    (config, running)
}

#[test]
fn verify_full_with_the_right_ca_syncs_and_require_connects_without_checking() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let files = TempDir::new("profile-sync-tls-ca");
    let ca = files.write("ca.pem", &pki.ca_pem);
    let source = common::ScriptedSource::fixed_page(page());

    let url = tls_url(
        &cluster,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let (config, target) = target_against(&url, &source.url);
    wait_until(
        "rows synced over verified TLS",
        Duration::from_secs(20),
        || users(&config) == 2,
    );
    let (code, _) = get(&format!("http://{}/readyz", target.addr));
    assert_eq!(code, 200);
    target.shutdown();

    // verify-ca checks the chain only: a host name not in the certificate
    // is fine.
    let url = tls_url(
        &cluster,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    let (config, target) = target_against(&url, &source.url);
    wait_until("ready over verify-ca", Duration::from_secs(20), || {
        target.status.is_ready()
    });
    assert_eq!(users(&config), 2);
    target.shutdown();

    // require encrypts without checking: no CA at hand, still connects.
    let url = tls_url(&cluster, "127.0.0.1", "sslmode=require");
    let (_, target) = target_against(&url, &source.url);
    wait_until("ready over unchecked TLS", Duration::from_secs(20), || {
        target.status.is_ready()
    });
    target.shutdown();

    // The DB_* form reads DB_SSLMODE and DB_SSLROOTCERT.
    let port = cluster.port.to_string();
    let config = self::config(&[
        ("DB_HOST", "localhost"),
        ("DB_PORT", &port),
        ("DB_NAME", "postgres"),
        ("DB_SSLMODE", "verify-full"),
        ("DB_SSLROOTCERT", &ca),
        ("SOURCE_SERVICE_URL", &source.url),
    ]);
    assert_eq!(users(&config), 2);
}

#[test]
fn a_wrong_ca_or_host_name_fails_clearly_and_readyz_says_503() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let files = TempDir::new("profile-sync-tls-ca");
    let ca = files.write("ca.pem", &pki.ca_pem);
    let other = files.write("other.pem", &Pki::other_ca_pem());
    let source = common::ScriptedSource::fixed_page(page());

    for (host, root, expected) in [
        ("localhost", &other, "UnknownIssuer"),
        ("127.0.0.1", &ca, "not valid for name"),
    ] {
        let url = tls_url(
            &cluster,
            host,
            &format!("sslmode=verify-full&sslrootcert={root}"),
        );
        let (_, target) = target_against(&url, &source.url);
        wait_until("the connection error", Duration::from_secs(20), || {
            last_error(&target).is_some_and(|error| !error.is_empty())
        });
        let error = last_error(&target).unwrap_or_default();
        assert!(
            error
                .to_ascii_lowercase()
                .contains(&expected.to_ascii_lowercase()),
            "{host}: {error}"
        );
        assert!(error.contains("certificate"), "{error}");
        assert!(error.contains("retrying cannot fix this"), "{error}");
        let (code, _) = get(&format!("http://{}/readyz", target.addr));
        assert_eq!(code, 503, "not ready: {error}");
        let (code, _) = get(&format!("http://{}/healthz", target.addr));
        assert_eq!(code, 200, "still running");
        target.shutdown();
    }
}

#[test]
fn disable_against_a_tls_only_server_fails_clearly() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let source = common::ScriptedSource::fixed_page(page());
    let (_, target) = target_against(
        &tls_url(&cluster, "127.0.0.1", "sslmode=disable"),
        &source.url,
    );
    wait_until("the connection error", Duration::from_secs(20), || {
        last_error(&target).is_some_and(|error| !error.is_empty())
    });
    let error = last_error(&target).unwrap_or_default();
    assert!(error.contains("no pg_hba.conf entry"), "{error}");
    assert!(error.contains("no encryption"), "{error}");
    assert!(error.contains("sslmode"), "says what to change: {error}");
    let (code, _) = get(&format!("http://{}/readyz", target.addr));
    assert_eq!(code, 503);
    target.shutdown();
}

/// An HTTPS source: one page of two profiles, served by rustls with the
/// test CA's `localhost` certificate. Records each request's head.
struct HttpsSource {
    url: String,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpsSource {
    fn start(pki: &Pki) -> HttpsSource {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.server_der.clone()], key)
            .unwrap();
        let server = Arc::new(server);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (server, seen) = (Arc::clone(&server), Arc::clone(&seen));
                thread::spawn(move || serve_one(stream, server, &seen));
            }
        });
        HttpsSource {
            url: format!("https://localhost:{port}/users/changes"),
            heads,
        }
    }
}

fn serve_one(
    stream: TcpStream,
    server: Arc<rustls::ServerConfig>,
    seen: &std::sync::Mutex<Vec<String>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(server) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return, // the handshake failed, or the client left
        }
    }
    seen.lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let body = page().to_string();
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

#[test]
fn an_https_source_is_trusted_through_source_ca_file_and_only_then() {
    let pki = Pki::new();
    let source = HttpsSource::start(&pki);
    let files = TempDir::new("profile-sync-https-ca");
    let ca = files.write("ca.pem", &pki.ca_pem);

    let db = TestDb::new();
    let trusted = config(&[
        ("DATABASE_URL", &db.url),
        ("SOURCE_SERVICE_URL", &source.url),
        ("SOURCE_CA_FILE", &ca),
        ("SOURCE_TOKEN", "https-token-1b2c"),
    ]);
    let target = App::start(trusted).expect("target starts");
    wait_until(
        "rows synced from the https source",
        Duration::from_secs(20),
        || db.count("SELECT count(*) FROM users") == 2,
    );
    assert_eq!(target.metrics.fetch_errors.get(), 0);
    let heads = source.heads.lock().unwrap().clone();
    assert!(
        heads.iter().any(
            |head| head.contains("authorization: Bearer https-token-1b2c")
                || head.contains("Authorization: Bearer https-token-1b2c")
        ),
        "the token is sent: {heads:?}"
    );
    target.shutdown();

    // The test CA is in no system store: without SOURCE_CA_FILE every fetch
    // fails, and the error says it is the certificate.
    let db = TestDb::new();
    let untrusted = config(&[
        ("DATABASE_URL", &db.url),
        ("SOURCE_SERVICE_URL", &source.url),
    ]);
    let target = App::start(untrusted).expect("target starts");
    wait_until("a fetch error", Duration::from_secs(20), || {
        target.metrics.fetch_errors.get() > 0
            && last_error(&target).is_some_and(|error| !error.is_empty())
    });
    let error = last_error(&target).unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert_eq!(db.count("SELECT count(*) FROM users"), 0);
    target.shutdown();
}

/// Starts a target with `database_url`, waits until it is ready, checks
/// the rows are there over its own TLS configuration, and stops it.
fn assert_syncs(database_url: &str, source: &str) {
    let (config, target) = target_against(database_url, source);
    wait_until(database_url, Duration::from_secs(20), || {
        (target.status.is_ready() && users(&config) == 2)
            || last_error(&target).is_some_and(|error| !error.is_empty())
    });
    let error = last_error(&target).unwrap_or_default();
    assert_eq!(users(&config), 2, "{database_url}: {error}");
    assert!(target.status.is_ready(), "{database_url}: {error}");
    target.shutdown();
}

/// Starts a target with `database_url`, waits for its connection error,
/// checks it is a certificate's and `/readyz` says 503, and gives it.
fn assert_refused(database_url: &str, source: &str) -> String {
    let (_, target) = target_against(database_url, source);
    wait_until("the connection error", Duration::from_secs(20), || {
        last_error(&target).is_some_and(|error| !error.is_empty())
    });
    let error = last_error(&target).unwrap_or_default();
    assert!(error.contains("certificate"), "{database_url}: {error}");
    let (code, _) = get(&format!("http://{}/readyz", target.addr));
    assert_eq!(code, 503, "{database_url}: {error}");
    target.shutdown();
    error
}

#[test]
fn a_certificate_without_subject_alt_name_is_checked_by_its_common_name() {
    let pki = Pki::new();
    let cluster = tls_cluster_serving(&pki.issue(&[], "localhost"));
    let files = TempDir::new("profile-sync-tls-ca");
    let ca = files.write("ca.pem", &pki.ca_pem);
    let source = common::ScriptedSource::fixed_page(page());
    let full = format!("sslmode=verify-full&sslrootcert={ca}");

    assert_syncs(&tls_url(&cluster, "localhost", &full), &source.url);
    let chain_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert_syncs(&tls_url(&cluster, "127.0.0.1", &chain_only), &source.url);

    // A Common Name that is not the host's is still refused.
    serve(&cluster, &pki.issue(&[], "elsewhere.example"));
    let error = assert_refused(&tls_url(&cluster, "localhost", &full), &source.url);
    assert!(error.contains("not valid for name"), "{error}");

    // With a DNS subjectAltName, the Common Name is not looked at.
    serve(&cluster, &pki.issue(&["elsewhere.example"], "localhost"));
    let error = assert_refused(&tls_url(&cluster, "localhost", &full), &source.url);
    assert!(error.contains("not valid for name"), "{error}");
}

/// The PostgreSQL manual's recipe ("Creating Certificates"): a self-signed
/// certificate, which clients then take as their root certificate.
fn manuals_self_signed_certificate(files: &TempDir, name: &str) -> ServerCert {
    let crt = files.0.join(format!("{name}.crt"));
    let key = files.0.join(format!("{name}.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "365", "-nodes", "-text"])
        .arg("-out")
        .arg(&crt)
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", "/CN=localhost"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command runs (Debian package openssl)");
    assert!(made.success(), "openssl req: {made}");
    ServerCert {
        cert_pem: std::fs::read_to_string(&crt).unwrap(),
        key_pem: std::fs::read_to_string(&key).unwrap(),
    }
}

#[test]
fn the_manuals_self_signed_certificate_is_trusted_as_its_own_root_and_only_it() {
    let files = TempDir::new("profile-sync-tls-self-signed");
    let server = manuals_self_signed_certificate(&files, "server");
    let cluster = tls_cluster_serving(&server);
    let root = files.write("root.crt", &server.cert_pem);
    let source = common::ScriptedSource::fixed_page(page());

    for (mode, host) in [
        ("verify-full", "localhost"),
        ("verify-ca", "127.0.0.1"),
        // `require` with a root certificate file checks as `verify-ca` does.
        ("require", "127.0.0.1"),
    ] {
        let query = format!("sslmode={mode}&sslrootcert={root}");
        assert_syncs(&tls_url(&cluster, host, &query), &source.url);
    }

    // Another self-signed certificate, for the same name, is no root of it.
    let other = manuals_self_signed_certificate(&files, "other");
    let other = files.write("other-root.crt", &other.cert_pem);
    for (mode, host) in [
        ("verify-full", "localhost"),
        ("verify-ca", "127.0.0.1"),
        ("require", "127.0.0.1"),
    ] {
        let query = format!("sslmode={mode}&sslrootcert={other}");
        let error = assert_refused(&tls_url(&cluster, host, &query), &source.url);
        assert!(error.contains("CaUsedAsEndEntity"), "{mode}: {error}");
    }
}

#[test]
fn require_with_a_root_certificate_file_checks_the_chain_as_verify_ca() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let files = TempDir::new("profile-sync-tls-ca");
    let ca = files.write("ca.pem", &pki.ca_pem);
    let other = files.write("other.pem", &Pki::other_ca_pem());
    let source = common::ScriptedSource::fixed_page(page());

    let error = assert_refused(
        &tls_url(
            &cluster,
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={other}"),
        ),
        &source.url,
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    // So does the default root file, ~/.postgresql/root.crt, when it exists.
    let home = TempDir::new("profile-sync-tls-home");
    std::fs::create_dir_all(home.0.join(".postgresql")).unwrap();
    home.write(".postgresql/root.crt", &Pki::other_ca_pem());
    let config = config(&[
        (
            "DATABASE_URL",
            &tls_url(&cluster, "127.0.0.1", "sslmode=require"),
        ),
        ("SOURCE_SERVICE_URL", &source.url),
        ("HOME", &home.0.display().to_string()),
    ]);
    let refusal = connect(&config.database).map(|_| ()).unwrap_err();
    let cause = format!("{refusal:?}");
    assert!(cause.contains("UnknownIssuer"), "{cause}");
    // The chain, not the name: 127.0.0.1 is not in the certificate.
    assert_syncs(
        &tls_url(
            &cluster,
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={ca}"),
        ),
        &source.url,
    );
}
