use super::*;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::mpsc;

#[test]
fn challenges_parse_with_quotes_commas_and_several_schemes() {
    let c = parse_challenges(
        r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(c[0].params["realm"], "https://auth.example.com/token");
    assert_eq!(c[0].params["service"], "registry.example.com");
    assert_eq!(c[0].params["scope"], "repository:a/b:pull,push");

    let c = parse_challenges(
        r#"Basic realm="Registry Realm", Bearer realm="http://127.0.0.1:1/t", error="invalid_token""#,
    );
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].scheme, "basic");
    assert_eq!(c[0].params["realm"], "Registry Realm");
    assert_eq!(c[1].scheme, "bearer");
    assert_eq!(c[1].params["error"], "invalid_token");

    let c = parse_challenges(r#"BASIC Realm=plain , bearer realm="a\"b""#);
    assert_eq!(c[0].scheme, "basic");
    assert_eq!(c[0].params["realm"], "plain");
    assert_eq!(c[1].params["realm"], "a\"b");

    // token68 and garbage never panic.
    let c = parse_challenges("Negotiate abc==, Basic");
    assert_eq!(
        c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
        ["negotiate", "basic"]
    );
    for s in [
        "",
        "=",
        "\"",
        "a=\"unterminated",
        ",,,",
        "Bearer realm=",
        "é=é",
    ] {
        let _ = parse_challenges(s);
    }
}

#[test]
fn retries_only_transient_statuses() {
    for s in [408, 429, 500, 502, 503, 504] {
        assert!(retryable_status(s), "{s}");
    }
    for s in [400, 401, 403, 404, 405, 409, 413, 416] {
        assert!(!retryable_status(s), "{s}");
    }
    let digest_invalid = RegistryError::Status {
        method: "PUT",
        url: "u".into(),
        status: 400,
        detail: "(DIGEST_INVALID: provided digest did not match uploaded content)".into(),
    };
    assert!(!digest_invalid.is_transient());
}

#[test]
fn urls_use_http_only_for_loopback_and_insecure_hosts_found_not_to_speak_tls() {
    let mut o = ClientOptions::anonymous();
    o.insecure = vec!["registry.lan:5000".into(), "plain.example".into()];
    let c = Client::new(o);
    let url = |s: &str| c.repo_url(&Reference::parse(s).unwrap());
    // Before any probe: https everywhere.
    assert_eq!(
        url("127.0.0.1:5000/a/b:1"),
        "https://127.0.0.1:5000/v2/a/b/"
    );
    assert_eq!(
        url("registry.lan:5000/x"),
        "https://registry.lan:5000/v2/x/"
    );
    // Found to speak plain HTTP: only hosts that may be plain get http.
    for h in [
        "127.0.0.1:5000",
        "localhost",
        "registry.lan:5000",
        "plain.example:8080",
        "ghcr.io",
    ] {
        c.schemes
            .lock()
            .unwrap()
            .insert(h.to_string(), HostScheme::Http);
    }
    assert_eq!(url("127.0.0.1:5000/a/b:1"), "http://127.0.0.1:5000/v2/a/b/");
    assert_eq!(url("localhost/x"), "http://localhost/v2/x/");
    assert_eq!(url("registry.lan:5000/x"), "http://registry.lan:5000/v2/x/");
    assert_eq!(
        url("registry.lan:5001/x"),
        "https://registry.lan:5001/v2/x/"
    );
    assert_eq!(
        url("plain.example:8080/x"),
        "http://plain.example:8080/v2/x/"
    );
    assert_eq!(
        url("alpine"),
        "https://registry-1.docker.io/v2/library/alpine/"
    );
    assert_eq!(url("ghcr.io/o/r"), "https://ghcr.io/v2/o/r/");
}

#[test]
fn locations_resolve_against_the_request() {
    let base = "http://127.0.0.1:5000/v2/a/blobs/uploads/";
    assert_eq!(
        join_url(base, "/v2/a/blobs/uploads/u1?_state=x"),
        "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x"
    );
    assert_eq!(
        join_url(base, "https://s3.example/b?sig=1"),
        "https://s3.example/b?sig=1"
    );
    assert_eq!(
        join_url(base, "u2"),
        "http://127.0.0.1:5000/v2/a/blobs/uploads/u2"
    );
    assert_eq!(join_url(base, "//cdn.example/x"), "http://cdn.example/x");
}

#[test]
fn origins_compare_scheme_host_and_port() {
    let o = |s: &str| origin_of(s).unwrap();
    assert_eq!(o("https://Reg.example/v2/"), o("https://reg.example:443/x"));
    assert_ne!(o("https://reg.example/v2/"), o("http://reg.example/v2/"));
    assert_ne!(o("http://127.0.0.1:5000/"), o("http://127.0.0.1:5001/"));
    assert_ne!(o("https://reg.example/"), o("https://s3.reg.example/"));
    assert_eq!(o("http://[::1]:5000/v2/").1, "[::1]:5000");
    assert_eq!(o("http://[::1]/v2/").1, "[::1]:80");
    assert!(origin_of("ftp://x/").is_none());
    assert!(origin_of("https://user:pw@x/").is_none());
    assert_eq!(host_of("[::1]:5000"), "::1");
    assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
}

#[test]
fn registry_error_bodies_are_bounded_and_escaped() {
    let d = detail_of(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#);
    assert_eq!(d, "(MANIFEST_UNKNOWN: manifest unknown)");
    let d = detail_of(
        format!(
            r#"{{"errors":[{{"code":"X","message":"a\u001b[31m{}"}}]}}"#,
            "y".repeat(5000)
        )
        .as_bytes(),
    );
    assert!(!d.contains('\u{1b}'), "{d}");
    assert!(d.chars().count() < DETAIL_CHARS + 40, "{}", d.len());
    assert_eq!(detail_of(b"<html>oops</html>"), "");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let h = basic_header("u", &Secret::new("hunter2"));
    assert!(!format!("{h:?}").contains("hunter2"));
    let c = client_with("127.0.0.1:1", "u", "hunter2");
    c.tokens.lock().unwrap().insert(
        ("h".into(), "s".into()),
        Token {
            value: Secret::new("tok-secret"),
            until: Instant::now(),
        },
    );
    let _ = c.login("127.0.0.1:1").unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("tok-secret"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------
// A scripted HTTP server on loopback: answers each connection with the next
// response and reports the request it got (request line and headers).

struct Script {
    addr: String,
    requests: mpsc::Receiver<String>,
    /// TLS ClientHellos received (answered as a plain HTTP server does: `400`).
    hellos: Arc<std::sync::atomic::AtomicUsize>,
}

fn serve(responses: Vec<Vec<u8>>) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    let hellos = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hellos.clone();
    std::thread::spawn(move || {
        let mut responses = responses.into_iter();
        while responses.len() > 0 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            // A TLS handshake record: not a request of the script.
            let mut first = [0u8; 1];
            if s.peek(&mut first).unwrap_or(0) == 1 && first[0] == 0x16 {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(&response("400 Bad Request", &[], b"400 Bad Request"));
                continue;
            }
            let Some(resp) = responses.next() else {
                return;
            };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let _ = tx.send(head);
            let _ = s.write_all(&resp);
        }
    });
    Script {
        addr,
        requests: rx,
        hellos,
    }
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn client_with(registry: &str, user: &str, password: &str) -> Client {
    let mut o = ClientOptions::anonymous();
    o.credentials = Arc::new(
        Credentials::from_sources(crate::registry::credentials::Sources {
            env_host: Some(registry.to_string()),
            env_username: Some(user.to_string()),
            env_password: Some(Secret::new(password)),
            ..Default::default()
        })
        .unwrap(),
    );
    Client::new(o)
}

#[test]
fn a_redirect_to_another_host_does_not_carry_the_credentials() {
    let blob = b"layer bytes".to_vec();
    let digest = Digest::of_bytes(&blob);
    let storage = serve(vec![response("200 OK", &[], &blob)]);
    let redirect_to = format!("http://{}/bucket/blob?sig=abc", storage.addr);
    let registry = serve(vec![
        response(
            "401 Unauthorized",
            &[("WWW-Authenticate", r#"Basic realm="test""#)],
            b"",
        ),
        response("307 Temporary Redirect", &[("Location", &redirect_to)], b""),
    ]);
    let r = Reference::parse(&format!("{}/app", registry.addr)).unwrap();
    let c = client_with(&r.registry, "alice", "s3cret");
    let mut out = Vec::new();
    let n = c
        .get_blob_to(&r, &digest, blob.len() as u64, &mut out)
        .unwrap();
    assert_eq!((n, out), (blob.len() as u64, blob));

    let first = registry.requests.recv().unwrap();
    assert!(
        !first.to_ascii_lowercase().contains("authorization"),
        "{first}"
    );
    let second = registry.requests.recv().unwrap();
    assert!(
        second.to_ascii_lowercase().contains("authorization: basic"),
        "{second}"
    );
    let at_storage = storage.requests.recv().unwrap();
    assert!(
        at_storage.starts_with("GET /bucket/blob?sig=abc "),
        "{at_storage}"
    );
    assert!(
        !at_storage.to_ascii_lowercase().contains("authorization"),
        "credentials went to the storage host: {at_storage}"
    );
}

#[test]
fn a_blob_with_the_wrong_digest_or_size_is_an_error() {
    let blob = b"what the registry sends".to_vec();
    let server = serve(vec![
        response("200 OK", &[], &blob),
        response("200 OK", &[], &blob),
    ]);
    let r = Reference::parse(&format!("{}/app", server.addr)).unwrap();
    let c = Client::new(ClientOptions::anonymous());
    let other = Digest::of_bytes(b"something else");
    let err = c
        .get_blob_to(&r, &other, blob.len() as u64, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, RegistryError::Digest { .. }), "{err}");
    let right = Digest::of_bytes(&blob);
    let err = c
        .get_blob_to(&r, &right, blob.len() as u64 - 1, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, RegistryError::Size { .. }), "{err}");
}

#[test]
fn bearer_tokens_are_fetched_with_the_scope_and_reused() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#.to_vec();
    let digest = Digest::of_bytes(&manifest);
    let auth = serve(vec![response(
        "200 OK",
        &[("Content-Type", "application/json")],
        br#"{"token":"tok-123","expires_in":300}"#,
    )]);
    let realm = format!("http://{}/token", auth.addr);
    let challenge = format!(r#"Bearer realm="{realm}",service="reg.test""#);
    let registry = serve(vec![
        response("401 Unauthorized", &[("WWW-Authenticate", &challenge)], b""),
        response(
            "200 OK",
            &[
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", &digest.to_string()),
            ],
            &manifest,
        ),
        response(
            "200 OK",
            &[
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", &digest.to_string()),
            ],
            &manifest,
        ),
    ]);
    let r = Reference::parse(&format!("{}/team/app@{digest}", registry.addr)).unwrap();
    let c = client_with(&r.registry, "bob", "pw");
    let f = c.get_manifest(&r).unwrap();
    assert_eq!((f.digest, f.media_type.as_str()), (digest, OCI_MANIFEST));
    let f = c.get_manifest(&r).unwrap();
    assert_eq!(f.bytes, manifest);

    let token_req = auth.requests.recv().unwrap();
    assert!(
        token_req.starts_with("GET /token?service=reg.test&scope=repository:team/app:pull "),
        "{token_req}"
    );
    assert!(
        token_req
            .to_ascii_lowercase()
            .contains("authorization: basic")
    );
    let _ = registry.requests.recv().unwrap();
    for _ in 0..2 {
        let with_token = registry.requests.recv().unwrap();
        assert!(with_token.contains("Bearer tok-123"), "{with_token}");
    }
}

#[test]
fn a_pinned_manifest_with_other_bytes_is_refused() {
    let sent = br#"{"schemaVersion":2}"#.to_vec();
    let server = serve(vec![response(
        "200 OK",
        &[("Content-Type", OCI_MANIFEST)],
        &sent,
    )]);
    let pinned = Digest::of_bytes(b"the real manifest");
    let r = Reference::parse(&format!("{}/app@{pinned}", server.addr)).unwrap();
    let err = Client::new(ClientOptions::anonymous())
        .get_manifest(&r)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Digest { .. }), "{err}");
}

#[test]
fn unauthorized_errors_name_the_registry_and_never_the_password() {
    let challenge = [("WWW-Authenticate", r#"Basic realm="r""#)];
    let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    let server = serve(vec![
        response("401 Unauthorized", &challenge, body),
        response("401 Unauthorized", &challenge, body),
    ]);
    let r = Reference::parse(&format!("{}/app:1", server.addr)).unwrap();
    let c = client_with(&r.registry, "alice", "wrong-pass-xyz");
    let err = c.resolve(&r).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains(&format!("authentication required for {}", r.registry)),
        "{msg}"
    );
    assert!(msg.contains("docker login"), "{msg}");
    assert!(!msg.contains("wrong-pass-xyz") && !format!("{err:?}").contains("wrong-pass-xyz"));
    // The Basic header went once, and was not sent again after it was refused.
    assert!(
        !server
            .requests
            .recv()
            .unwrap()
            .to_ascii_lowercase()
            .contains("authorization")
    );
    assert!(
        server
            .requests
            .recv()
            .unwrap()
            .to_ascii_lowercase()
            .contains("authorization")
    );
}

#[test]
fn a_server_error_is_retried_and_a_client_error_is_not() {
    let ok = b"blob".to_vec();
    let d = Digest::of_bytes(&ok);
    let server = serve(vec![
        response("503 Service Unavailable", &[], b""),
        response("429 Too Many Requests", &[("Retry-After", "0")], b""),
        response("200 OK", &[], &ok),
        response(
            "400 Bad Request",
            &[],
            br#"{"errors":[{"code":"DIGEST_INVALID","message":"no"}]}"#,
        ),
    ]);
    let r = Reference::parse(&format!("{}/app", server.addr)).unwrap();
    let c = Client::new(ClientOptions::anonymous());
    let mut out = Vec::new();
    c.get_blob_to(&r, &d, 4, &mut out).unwrap();
    assert_eq!(out, ok);
    let err = c.get_blob_to(&r, &d, 4, &mut Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("HTTP 400 (DIGEST_INVALID: no)"),
        "{err}"
    );
    for _ in 0..4 {
        server.requests.recv().unwrap();
    }
    // No fifth request: the 400 was not retried (the script has ended, so a
    // retry would have found the listener closed and failed differently).
    assert!(server.requests.try_recv().is_err());
}

#[test]
fn a_plain_http_token_realm_elsewhere_is_refused() {
    let challenge = r#"Bearer realm="http://auth.example.com/token",service="s""#;
    let server = serve(vec![response(
        "401 Unauthorized",
        &[("WWW-Authenticate", challenge)],
        b"",
    )]);
    let r = Reference::parse(&format!("{}/app:1", server.addr)).unwrap();
    let c = client_with(&r.registry, "alice", "pw");
    let err = c.resolve(&r).unwrap_err().to_string();
    assert!(err.contains("plain http on a non-loopback host"), "{err}");
}

#[test]
fn https_to_a_plain_http_registry_names_the_insecure_flag() {
    // A plain HTTP server that answers without reading (a TLS hello has no lines).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&response("400 Bad Request", &[], b"plain http"));
        }
    });
    let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
    // (A loopback registry is reached over http; this call is made over https.)
    let c = Client::new(ClientOptions::anonymous());
    let call = Call {
        method: "GET",
        url: format!("https://{addr}/v2/app/manifests/1"),
        reference: &r,
        scopes: vec![("app".into(), "pull")],
        headers: Vec::new(),
        body: None,
    };
    let msg = match c.send_once(&call) {
        Ok(Outcome::Retry(e, _)) => e.to_string(),
        Ok(Outcome::Done(_)) => panic!("a TLS handshake with a plain HTTP server succeeded"),
        Err(e) => panic!("a transport failure is retried, not final: {e}"),
    };
    assert!(
        msg.contains(&format!(
            "allow it with `--insecure-registry {}`",
            r.registry
        )),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------
// https first for hosts that may be plain HTTP

#[test]
fn tls_failures_are_told_apart_plain_http_certificate_and_others() {
    use rustls::{CertificateError, Error as R, InvalidMessage};
    let not_tls = ureq::Error::Rustls(R::InvalidMessage(InvalidMessage::InvalidContentType));
    assert_eq!(tls_failure(&not_tls), Some(TlsFailure::NotTls));
    // As ureq really reports it: a rustls error inside an io::Error.
    let wrapped = ureq::Error::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        R::InvalidMessage(InvalidMessage::InvalidContentType),
    ));
    assert_eq!(tls_failure(&wrapped), Some(TlsFailure::NotTls));
    for cert in [
        CertificateError::UnknownIssuer,
        CertificateError::Expired,
        CertificateError::NotValidForName,
        CertificateError::BadSignature,
    ] {
        let e = ureq::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            R::InvalidCertificate(cert),
        ));
        match tls_failure(&e) {
            Some(TlsFailure::Certificate(why)) => assert!(why.contains("certificate"), "{why}"),
            other => panic!("a certificate failure classified as {other:?}"),
        }
    }
    // Other TLS failures and non-TLS failures never mean "plain HTTP".
    let alert = ureq::Error::Rustls(R::AlertReceived(rustls::AlertDescription::HandshakeFailure));
    assert_eq!(tls_failure(&alert), Some(TlsFailure::Other));
    let other_message = ureq::Error::Rustls(R::InvalidMessage(InvalidMessage::MessageTooLarge));
    assert_eq!(tls_failure(&other_message), Some(TlsFailure::Other));
    let eof = ureq::Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
    assert_eq!(tls_failure(&eof), None);
    let refused = ureq::Error::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
    assert_eq!(tls_failure(&refused), None);
    assert_eq!(tls_failure(&ureq::Error::HostNotFound), None);
}

#[test]
fn a_real_handshake_with_a_plain_http_server_is_classified_not_tls() {
    // (The script's response is never used: the handshake is answered `400`.)
    let server = serve(vec![response("200 OK", &[], b"")]);
    let c = Client::new(ClientOptions::anonymous());
    let e = c
        .agent
        .get(format!("https://{}/v2/", server.addr).as_str())
        .call()
        .unwrap_err();
    assert_eq!(tls_failure(&e), Some(TlsFailure::NotTls), "{e}");
}

#[test]
fn a_loopback_registry_that_does_not_speak_tls_is_reached_over_http_after_one_probe() {
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let ok = || {
        response(
            "200 OK",
            &[("Content-Type", OCI_MANIFEST)],
            manifest.as_slice(),
        )
    };
    let server = serve(vec![ok(), ok(), ok()]);
    let r = Reference::parse(&format!("{}/app:1", server.addr)).unwrap();
    let c = Client::new(ClientOptions::anonymous());
    assert_eq!(c.scheme(&r), "https");
    for _ in 0..3 {
        let f = c.get_manifest(&r).unwrap();
        assert_eq!(f.bytes, manifest.to_vec());
    }
    // One handshake for the host, then plain HTTP for every request.
    assert_eq!(server.hellos.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(c.scheme(&r), "http");
    for _ in 0..3 {
        let head = server.requests.recv().unwrap();
        assert!(
            head.starts_with("GET /v2/app/manifests/1 HTTP/1.1"),
            "{head}"
        );
    }
}

#[test]
fn a_peer_that_hangs_up_on_the_handshake_is_not_taken_for_plain_http() {
    // It closes without answering: nothing says it speaks plain HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 5];
            let _ = s.read_exact(&mut buf);
            let _ = tx.send(buf.to_vec());
        }
    });
    let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
    let c = Client::new(ClientOptions::anonymous());
    let err = c.get_manifest(&r).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("https://"), "{err}");
    assert_eq!(c.scheme(&r), "https");
    // Every connection began with a TLS record: no request went in plain HTTP.
    let got: Vec<Vec<u8>> = rx.try_iter().collect();
    assert_eq!(got.len(), ATTEMPTS as usize, "{got:?}");
    assert!(got.iter().all(|b| b[0] == 0x16), "{got:?}");
}

#[test]
fn a_certificate_that_does_not_verify_is_an_error_and_never_a_fall_back() {
    let server = serve(vec![response("200 OK", &[], b"")]);
    let r = Reference::parse(&format!("{}/app:1", server.addr)).unwrap();
    let c = Client::new(ClientOptions::anonymous());
    // What a probe of a TLS server with an untrusted certificate records.
    c.schemes.lock().unwrap().insert(
        r.api_host().to_ascii_lowercase(),
        HostScheme::BadCertificate("invalid peer certificate: UnknownIssuer".into()),
    );
    let err = c.get_manifest(&r).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{msg}");
    assert!(
        msg.contains(&r.registry) && msg.contains("certificate"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("`https://{}/v2/app/manifests/1`", server.addr)),
        "{msg}"
    );
    assert!(!err.is_transient());
    // Nothing was sent, in any scheme.
    assert!(server.requests.try_recv().is_err());
    assert_eq!(server.hellos.load(std::sync::atomic::Ordering::SeqCst), 0);
}
