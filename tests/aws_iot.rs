//! The IoT credentials provider against a local mutual-TLS server on 127.0.0.1 whose CA,
//! server and device certificates are generated in the test (rcgen), which requires a client
//! certificate signed by its CA, and which records each request's path and headers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kinesis_edge::aws::clock::format_rfc3339;
use kinesis_edge::aws::{
    CredentialsCache, CredentialsError, DEFAULT_REFRESH_BEFORE, IotCredentialsProvider,
    IotSettings, ProvideCredentials, Secret,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "iot-secret-access-key-VALUE";
const TOKEN: &str = "iot-session-token-VALUE";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf certificate and its key (PKCS#8).
    fn leaf(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, KeyPair) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, "leaf");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert, key)
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    client_certificates: usize,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> (u16, String) + Send + Sync>;

struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handshake_failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTPS on 127.0.0.1, requiring a client certificate issued by `client_ca`.
async fn serve(server_ca: &Ca, client_ca: &Ca, respond: Responder) -> Server {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der()).expect("client CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let (cert, key) = server_ca.leaf(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handshake_failures = Arc::new(AtomicU64::new(0));
    let (log, failures) = (Arc::clone(&requests), Arc::clone(&handshake_failures));
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut tls) = acceptor.accept(socket).await else {
                failures.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let client_certificates = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let recorded = Recorded {
                method: request_line.next().unwrap_or_default().to_owned(),
                path: request_line.next().unwrap_or_default().to_owned(),
                headers: lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect(),
                client_certificates,
            };
            let (status, body) = respond(&recorded);
            log.lock().expect("log").push(recorded);
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    Server {
        port,
        requests,
        handshake_failures,
        task,
    }
}

struct Device {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// Writes a device certificate issued by `device_ca`, its key, and `trusted_ca` as the CA file.
fn device_files(device_ca: &Ca, trusted_ca: &Ca) -> Device {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = device_ca.leaf(&[], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert_path = write("device.pem.crt", &cert.pem());
    let key_path = write("private.pem.key", &key.serialize_pem());
    let ca_path = write("AmazonRootCA1.pem", &trusted_ca.issuer.pem());
    Device {
        _dir: dir,
        cert: cert_path,
        key: key_path,
        ca: ca_path,
    }
}

fn settings(port: u16, device: &Device) -> IotSettings {
    IotSettings {
        endpoint: format!("127.0.0.1:{port}"),
        cert_path: device.cert.clone(),
        key_path: device.key.clone(),
        ca_path: Some(device.ca.clone()),
        role_alias: "kvs-camera-role-alias".into(),
        thing_name: "front-door".into(),
    }
}

fn credentials_body(expires_at: SystemTime) -> String {
    format!(
        r#"{{"credentials":{{"accessKeyId":"ASIAIOTTEST","secretAccessKey":"{SECRET}","sessionToken":"{TOKEN}","expiration":"{}"}}}}"#,
        format_rfc3339(expires_at)
    )
}

fn truncate_to_seconds(time: SystemTime) -> SystemTime {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test]
async fn fetches_credentials_over_mutual_tls() {
    let ca = Ca::new("test CA");
    let expires_at = truncate_to_seconds(SystemTime::now() + Duration::from_secs(3600));
    let server = serve(
        &ca,
        &ca,
        Arc::new(move |_| (200, credentials_body(expires_at))),
    )
    .await;
    let device = device_files(&ca, &ca);
    let provider = IotCredentialsProvider::new(settings(server.port, &device));
    assert_eq!(provider.name(), "iot");

    let creds = provider.provide().await.expect("credentials");
    assert_eq!(creds.access_key_id, "ASIAIOTTEST");
    assert_eq!(creds.secret_access_key.expose(), SECRET);
    assert_eq!(
        creds.session_token.as_ref().map(Secret::expose),
        Some(TOKEN)
    );
    assert_eq!(creds.expires_at, Some(expires_at));
    let debug = format!("{creds:?}");
    assert!(!debug.contains(SECRET) && !debug.contains(TOKEN), "{debug}");

    let requests = server.requests.lock().expect("log").clone();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        "/role-aliases/kvs-camera-role-alias/credentials"
    );
    assert_eq!(request.header("x-amzn-iot-thingname"), Some("front-door"));
    assert_eq!(
        request.client_certificates, 1,
        "the device certificate was presented"
    );
}

#[tokio::test]
async fn cache_refreshes_iot_credentials_before_expiry() {
    let ca = Ca::new("test CA");
    let expires_at = truncate_to_seconds(SystemTime::now() + Duration::from_secs(3600));
    let server = serve(
        &ca,
        &ca,
        Arc::new(move |_| (200, credentials_body(expires_at))),
    )
    .await;
    let device = device_files(&ca, &ca);
    let provider = Arc::new(IotCredentialsProvider::new(settings(server.port, &device)));
    // Simulated time: seconds added to the real clock.
    let advance = Arc::new(AtomicU64::new(0));
    let clock_advance = Arc::clone(&advance);
    let cache = CredentialsCache::new(provider, DEFAULT_REFRESH_BEFORE).with_clock(move || {
        SystemTime::now() + Duration::from_secs(clock_advance.load(Ordering::SeqCst))
    });

    cache.get().await.expect("first fetch");
    cache.get().await.expect("cached");
    assert_eq!(server.requests.lock().expect("log").len(), 1);
    assert_eq!(cache.expires_at(), Some(expires_at));
    // 50 minutes on: more than 5 minutes left, still cached.
    advance.store(50 * 60, Ordering::SeqCst);
    cache.get().await.expect("cached");
    assert_eq!(server.requests.lock().expect("log").len(), 1);
    // 56 minutes on: inside the refresh margin, fetched again.
    advance.store(56 * 60, Ordering::SeqCst);
    cache.get().await.expect("refreshed");
    assert_eq!(server.requests.lock().expect("log").len(), 2);
    // After a 403 from AWS the caller invalidates: the next get fetches.
    cache.invalidate();
    cache.get().await.expect("refetched");
    assert_eq!(server.requests.lock().expect("log").len(), 3);
}

#[tokio::test]
async fn error_statuses_are_reported_with_their_body() {
    let ca = Ca::new("test CA");
    let server = serve(
        &ca,
        &ca,
        Arc::new(|request: &Recorded| {
            if request.path.contains("/role-aliases/unknown-alias/") {
                (404, r#"{"message":"Role alias does not exist"}"#.to_owned())
            } else {
                (503, r#"{"message":"Service Unavailable"}"#.to_owned())
            }
        }),
    )
    .await;
    let device = device_files(&ca, &ca);
    let missing_alias = IotCredentialsProvider::new(IotSettings {
        role_alias: "unknown-alias".into(),
        ..settings(server.port, &device)
    });
    let err = missing_alias.provide().await.expect_err("404");
    assert!(
        matches!(err, CredentialsError::IotStatus { status: 404, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("Role alias does not exist"),
        "{err}"
    );
    assert!(!err.is_retryable());

    let unavailable = IotCredentialsProvider::new(settings(server.port, &device));
    let err = unavailable.provide().await.expect_err("503");
    assert!(
        matches!(err, CredentialsError::IotStatus { status: 503, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_device_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("test CA");
    let rogue = Ca::new("rogue CA");
    let server = serve(
        &ca,
        &ca,
        Arc::new(|_| (200, credentials_body(SystemTime::now()))),
    )
    .await;
    let device = device_files(&rogue, &ca);
    let err = IotCredentialsProvider::new(settings(server.port, &device))
        .provide()
        .await
        .expect_err("handshake refused");
    assert!(matches!(err, CredentialsError::IotRequest { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(server.requests.lock().expect("log").is_empty());
    // The server saw (and failed) a handshake; give its task a moment to count it.
    for _ in 0..50 {
        if server.handshake_failures.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.handshake_failures.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn an_endpoint_outside_the_configured_ca_is_refused() {
    let ca = Ca::new("test CA");
    let other = Ca::new("other CA");
    let server = serve(
        &ca,
        &ca,
        Arc::new(|_| (200, credentials_body(SystemTime::now()))),
    )
    .await;
    let device = device_files(&ca, &other);
    let err = IotCredentialsProvider::new(settings(server.port, &device))
        .provide()
        .await
        .expect_err("server not trusted");
    assert!(matches!(err, CredentialsError::IotRequest { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_answer_never_leaks_the_secret() {
    let ca = Ca::new("test CA");
    let server = serve(
        &ca,
        &ca,
        Arc::new(|_| {
            (
                200,
                format!(
                    r#"{{"credentials":{{"accessKeyId":"ASIA","secretAccessKey":"{SECRET}","sessionToken":"{TOKEN}","expiration":12}}}}"#
                ),
            )
        }),
    )
    .await;
    let device = device_files(&ca, &ca);
    let err = IotCredentialsProvider::new(settings(server.port, &device))
        .provide()
        .await
        .expect_err("bad JSON");
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err, CredentialsError::IotResponse { .. }),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn offline_construction_and_unreachable_endpoint() {
    let ca = Ca::new("test CA");
    let device = device_files(&ca, &ca);
    // Nothing listens on this port (bound and released).
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let provider = IotCredentialsProvider::new(settings(port, &device));
    let err = provider.provide().await.expect_err("connection refused");
    assert!(matches!(err, CredentialsError::IotRequest { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(Path::new(&device.cert).exists());
}
