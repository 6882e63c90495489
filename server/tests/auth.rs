//! Bring-your-own identity provider: JWTs from a test IdP (HS256, and ES256
//! with keys from a JWKS served on 127.0.0.1), every refusal a 401, dev
//! sign-in off unless asked for, and the per-IP limit on failed attempts.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use dovecote_server::jwt::JwksSource;
use hyper::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "dovecote-test";
const SECRET: &[u8] = b"a shared secret of the app and the server, 32+ bytes";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A P-256 signing key of the test IdP and its public JWK.
struct EcKey {
    pkcs8: Vec<u8>,
    kid: String,
}

impl EcKey {
    fn generate(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        EcKey { pkcs8: pkcs8.as_ref().to_vec(), kid: kid.to_owned() }
    }

    fn jwk(&self) -> serde_json::Value {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8, &SystemRandom::new())
                .unwrap();
        let point = pair.public_key().as_ref(); // 0x04 || x || y
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Claims that pass every check, for `sub`.
fn claims(sub: &str) -> serde_json::Value {
    let now = now_secs();
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 600 })
}

fn with(mut claims: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    claims[key] = value;
    claims
}

/// A tiny HTTP server on 127.0.0.1 answering every GET with the current JWKS
/// (a thread, so it serves while the server's blocking fetch waits).
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<Mutex<u32>>,
}

impl JwksServer {
    fn start(keys: &[&EcKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let server = JwksServer { url, body: Arc::default(), fetches: Arc::default() };
        server.serve(keys);
        let (body, fetches) = (server.body.clone(), server.fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear(); // skip the request line and headers
                }
                *fetches.lock().unwrap() += 1;
                let body = body.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        server
    }

    /// From now on, serve these keys.
    fn serve(&self, keys: &[&EcKey]) {
        let keys: Vec<_> = keys.iter().map(|k| k.jwk()).collect();
        *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    /// From now on, serve this document.
    fn serve_json(&self, jwks: serde_json::Value) {
        *self.body.lock().unwrap() = jwks.to_string();
    }

    fn fetches(&self) -> u32 {
        *self.fetches.lock().unwrap()
    }
}

async fn idp_server(jwks: &JwksServer) -> TestServer {
    let url = jwks.url.clone();
    TestServer::start_with(move |c| {
        c.dev_sign_in = false;
        c.jwt.hs256_secret = Some(SECRET.to_vec());
        c.jwt.jwks = Some(JwksSource::parse(&url));
        c.jwt.issuer = Some(ISSUER.into());
        c.jwt.audience = Some(AUDIENCE.into());
    })
    .await
}

/// What the server answers a pull with `token`.
async fn pull_status(server: &TestServer, token: &str) -> StatusCode {
    server.http.get("/v1/pull", Some(token)).await.status
}

// multi_thread: the server's first JWKS fetch blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_tokens_work_and_every_bad_one_gets_401() {
    let key = EcKey::generate("key-1");
    let jwks = JwksServer::start(&[&key]);
    let server = idp_server(&jwks).await;
    let http = &server.http;

    // Dev sign-in is off: not mounted at all.
    let reply = http.post("/v1/session", None, r#"{"user":"alice"}"#).await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // HS256 and ES256 (kid from the JWKS) both sign alice in; her data is hers under either.
    let alice_hs = hs256(&claims("alice"), SECRET);
    let alice_es = key.sign(&claims("alice"));
    let thread = thread_id();
    let pushed = http
        .push_ok(
            &alice_hs,
            &push_request(
                device_id(),
                vec![create_thread(1, thread, &[]), send(2, thread, message_id(), "hi")],
            ),
        )
        .await;
    assert_eq!(pushed.acks.len(), 2);
    let pages = http.pull_all(&alice_es, 0, 500, None).await;
    assert_eq!(pages[0].changes.len(), 2, "the ES256 token is alice too");
    let bob = key.sign(&claims("bob"));
    assert!(http.pull_all(&bob, 0, 500, None).await[0].changes.is_empty(), "bob sees nothing of hers");

    // Leeway: 10 s past exp still passes (clock skew), 2 min does not.
    let now = now_secs();
    assert_eq!(pull_status(&server, &key.sign(&with(claims("alice"), "exp", json!(now - 10)))).await, 200);

    let other_key = EcKey::generate("key-1"); // same kid, another key
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("alice").to_string())
    );
    let tampered = {
        // alice's valid ES256 token with the payload swapped for mallory's.
        let mallory = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
        let parts: Vec<&str> = alice_es.split('.').collect();
        format!("{}.{mallory}.{}", parts[0], parts[2])
    };
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let bad = [
        ("expired", key.sign(&with(claims("alice"), "exp", json!(now - 120)))),
        ("expired HS256", hs256(&with(claims("alice"), "exp", json!(now - 120)), SECRET)),
        ("not yet valid", key.sign(&with(claims("alice"), "nbf", json!(now + 120)))),
        ("wrong issuer", key.sign(&with(claims("alice"), "iss", json!("https://evil.test")))),
        ("no issuer", {
            let mut c = claims("alice");
            c.as_object_mut().unwrap().remove("iss");
            key.sign(&c)
        }),
        ("wrong audience", key.sign(&with(claims("alice"), "aud", json!("another-app")))),
        ("wrong key (ES256)", other_key.sign(&claims("alice"))),
        ("wrong key (HS256)", hs256(&claims("alice"), b"not the shared secret, but as long")),
        ("unknown kid", EcKey::generate("key-9").sign(&claims("alice"))),
        ("alg none", none_token),
        ("tampered", tampered),
        ("no exp", key.sign(&no_exp)),
        ("bidi user id", key.sign(&claims("ali\u{202e}ce"))),
        ("zero-width user id", hs256(&claims("ali\u{200b}ce"), SECRET)),
        ("no sub", key.sign(&with(claims("alice"), "sub", json!(7)))),
        // A dev sign-in token is worthless on a server without dev sign-in.
        ("dev token", server.app.signer.session_token(&user("alice"), u64::MAX)),
        ("garbage", "a.b.c".into()),
    ];
    let dump = server.dump();
    for (what, token) in &bad {
        let reply = http.get("/v1/pull", Some(token)).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{what}"
        );
        let push =
            http.push(token, &push_request(device_id(), vec![create_thread(1, thread_id(), &[])])).await;
        assert_eq!(push.status, StatusCode::UNAUTHORIZED, "{what}");
        let socket =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/events?token={token}", server.addr)).await;
        assert!(socket.is_err(), "{what}: a bad token gets no socket");
    }
    assert_eq!(server.dump(), dump, "refused tokens changed nothing");
    assert_eq!(pull_status(&server, &alice_es).await, 200);
    server.stop().await;
}

/// A 2048-bit RSA key made for this test only (`openssl genrsa`), PKCS#1
/// DER, and its public modulus and exponent (ring cannot generate RSA keys).
const TEST_RSA_DER: &str = "MIIEowIBAAKCAQEAhRwh/AoAHV7DTiSY6AIMFqT4AewH8q67losMUo65DKKfix15Yc2qWh/nZ00F2gJ8HEAUOsUHmWsSvUA1M/+lf3pCWC9vcqiv4DICRKrWWDfr5ZTw4sIyhsrsmJWf2sOVq1n7HDbYEt2HyntdrPPwGHKHzOpsoqsktvb7hE0g7CceUq3wd4NvbWiEqcDEcsbLG4OD68dG68voEVKREopHyB31ds2hdnIj7plCg4NoyFHy8U4mXSgcrE3nDsTzrAm6XBPDboCPe73/1qLdcAkNamQtlLEG0pdA14lcsWFoGc04TGu5ogZ+HtrjbWv8cnYrLwnvjWEbnpQAgasllMs/oQIDAQABAoIBAAFDP36IQwDkUiyYp+dsBQy2MQjWIgtrHUoP3LygAFkChipL+9e522nGU5PxGOsM8tvS/wohbjl2KL/pNvP8wud1G8HhxdAv8dap7Mf1WaoNsj/72CbjhhaNoF3Qbgs1h6L/7BQUAFvZ9IC/B7gFOp/lvrxqtR/8KQGQEVnbgDJjR1uQiDJ/qb7ikemu/zZPnEQ85gDTcjrla8qJ6yL6ceqEn/itFsG7BL+wkDA+mAj6jqlvT/nsAvN3Vpal+Z5Zc3LZqxX+SX4QJSM+iaUDWCx6QsVkumi9mj/djAMVrBuBtv3YSmGfSx1HOh8PKcbaoZ5EMNgykDUu+p8e35s+0wECgYEAuiP0gWvkNCt33axh8oVRaN9GeLmiTI7r9D+p2y49MJnM55mevy0E7iMe8sOtaNo5qeSwtJcM112isbpM6OqIBPclsyTfOknp2LanV5kiM1/5NL/Zj+17qrmJzLIBn2jvNrTAYp1IHOJQ8BzBYhVH2ct22sPTYaz9qxl/cpdSmIECgYEAtxEYf8mC306tpAdQ6fEIIGMIUEHWt1vPEcRYG+17LSzOmcWVcgWTNKDOmNEkqeoyRc9Lt2xKoGXKJY8fKtGJnZe8pnheS5ruWNd88gpGscJiBCtKYazecNactTxEjY1Y0i/pob3Rw82aYspO5P4SQD06jcTHY6AHZY3Z0L5yFyECgYByxWKoPjcqN7cj1ntaRvuoVysjmwpIfENeibaYr40JH3vpPZ5VMFP+5Wbatu6AXTX63EhcQVqonFKJlV6AqsONlDoJmG2Pii2G8zCBYall1gJZlQV3qi17WgVuUj+P4+rDZ3XMGEBzltPjCUfvy0FPOBYj02TNsBWE3ybnKAjEgQKBgBTEAa1tJEVEXXn/wnPm/W7/DNBdx4dhCKoRRZVVaOWE8aKLwRn/++S6YPUAtFH52N4GV6ZkyEpNgZKlG3n17tBLiACyIrAc0PCO8QNbmw1K6WdjqbpOq6TNE1WTkosj/3FIMg5Aw+ycA+k03aIoF9XlnCC8s4lfe7dPUefV0odBAoGBAJ0MtsTkfINoS0kelHcmLYT1aOPctZ7MBBByk4+9j2l3wHLbUwCCXaKqtnHsxKfvOyA6u8lvhMMKs1xKlXWYFApNCdzqG5c/K8hOkjJGJAo19HLjuih+81qTiq0jzLrkIoCG3kjyl3hHmnk6Mp9Iaxpqpzq1kF72FY23aWxuftP8";
const TEST_RSA_N: &str = "hRwh_AoAHV7DTiSY6AIMFqT4AewH8q67losMUo65DKKfix15Yc2qWh_nZ00F2gJ8HEAUOsUHmWsSvUA1M_-lf3pCWC9vcqiv4DICRKrWWDfr5ZTw4sIyhsrsmJWf2sOVq1n7HDbYEt2HyntdrPPwGHKHzOpsoqsktvb7hE0g7CceUq3wd4NvbWiEqcDEcsbLG4OD68dG68voEVKREopHyB31ds2hdnIj7plCg4NoyFHy8U4mXSgcrE3nDsTzrAm6XBPDboCPe73_1qLdcAkNamQtlLEG0pdA14lcsWFoGc04TGu5ogZ-HtrjbWv8cnYrLwnvjWEbnpQAgasllMs_oQ";
const TEST_RSA_E: &str = "AQAB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_from_the_jwks_works_and_its_public_key_is_no_hmac_secret() {
    use base64::engine::general_purpose::STANDARD;
    let ec = EcKey::generate("ec-1");
    let jwks = JwksServer::start(&[&ec]);
    let rsa_jwk = json!({ "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": TEST_RSA_N, "e": TEST_RSA_E });
    // An encryption key and a key for an algorithm we do not take are skipped.
    let skipped = json!({ "kty": "RSA", "kid": "enc-1", "use": "enc", "n": TEST_RSA_N, "e": TEST_RSA_E });
    jwks.serve_json(json!({ "keys": [ec.jwk(), rsa_jwk, skipped] }));
    let server = idp_server(&jwks).await;
    let rsa = EncodingKey::from_rsa_der(&STANDARD.decode(TEST_RSA_DER).unwrap());
    let sign_rs = |kid: &str, claims: &serde_json::Value| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &rsa).unwrap()
    };
    assert_eq!(pull_status(&server, &sign_rs("rsa-1", &claims("alice"))).await, 200);
    assert_eq!(pull_status(&server, &ec.sign(&claims("alice"))).await, 200, "ES256 beside it");
    // The same RSA key under the kid of the encryption key, or of the EC key: refused.
    assert_eq!(pull_status(&server, &sign_rs("enc-1", &claims("alice"))).await, 401);
    assert_eq!(pull_status(&server, &sign_rs("ec-1", &claims("alice"))).await, 401);
    // Algorithm confusion: an HS256 token "signed" with the RSA public key as the secret.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    for secret in [TEST_RSA_N.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(TEST_RSA_N).unwrap()] {
        let forged =
            jsonwebtoken::encode(&header, &claims("alice"), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(pull_status(&server, &forged).await, 401);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_key_is_picked_up_and_the_user_claim_is_configurable() {
    let old = EcKey::generate("2026-old");
    let jwks = JwksServer::start(&[&old]);
    let url = jwks.url.clone();
    let server = TestServer::start_with(move |c| {
        c.dev_sign_in = false;
        c.jwt.jwks = Some(JwksSource::parse(&url));
        c.jwt.user_claim = "email".into();
    })
    .await;
    assert_eq!(jwks.fetches(), 1, "loaded at startup");
    let claims = |email: &str| json!({ "sub": "uid-123", "email": email, "exp": now_secs() + 600 });
    let token = old.sign(&claims("alice@example.com"));
    assert_eq!(pull_status(&server, &token).await, 200);
    assert_eq!(pull_status(&server, &old.sign(&json!({ "sub": "x", "exp": now_secs() + 600 }))).await, 401);

    // The IdP rotates: a token with the new kid makes the server re-read the set once.
    let new = EcKey::generate("2026-new");
    jwks.serve(&[&old, &new]);
    assert_eq!(pull_status(&server, &new.sign(&claims("alice@example.com"))).await, 200);
    assert_eq!(jwks.fetches(), 2);
    // Unknown kids do not make it fetch again and again (cooldown).
    for _ in 0..5 {
        assert_eq!(pull_status(&server, &EcKey::generate("nope").sign(&claims("a@b"))).await, 401);
    }
    assert_eq!(jwks.fetches(), 2, "within the cooldown of the last reload: no fetch");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_refreshed_on_its_interval_so_a_withdrawn_key_stops_working() {
    let (old, new) = (EcKey::generate("old"), EcKey::generate("new"));
    let jwks = JwksServer::start(&[&old, &new]);
    let url = jwks.url.clone();
    let server = TestServer::start_with(move |c| {
        c.dev_sign_in = false;
        c.jwt.jwks = Some(JwksSource::parse(&url));
        c.jwt.jwks_refresh = Duration::from_millis(200);
    })
    .await;
    let claims = json!({ "sub": "alice", "exp": now_secs() + 600 });
    let (old_token, new_token) = (old.sign(&claims), new.sign(&claims));
    assert_eq!(pull_status(&server, &old_token).await, 200);
    // The IdP withdraws the old key (say, it leaked).
    jwks.serve(&[&new]);
    let fetched = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(jwks.fetches() > fetched, "refreshed on its own");
    assert_eq!(pull_status(&server, &old_token).await, 401, "a withdrawn key no longer signs anyone in");
    assert_eq!(pull_status(&server, &new_token).await, 200);
    // The IdP is down for a while: the keys it served last stay in use.
    jwks.serve_json(json!("not a JWKS"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pull_status(&server, &new_token).await, 200, "a failed refresh keeps the old keys");
    server.stop().await;
}

#[tokio::test]
async fn without_dev_sign_in_the_binary_404s_the_sign_in_and_takes_hs256_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat()).unwrap();
    let secret_arg = secret_file.to_str().unwrap();
    let mut server = ServerProcess::start_bare(
        &dir.path().join("db"),
        &["--jwt-hs256-secret-file", secret_arg, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
    );
    let http = server.http.clone();
    assert_eq!(http.post("/v1/session", None, r#"{"user":"alice"}"#).await.status, StatusCode::NOT_FOUND);
    let token = hs256(&claims("alice"), SECRET);
    assert_eq!(http.get("/v1/pull", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(server.signal_and_wait("TERM").code(), Some(0));
    let log = server.stderr();
    assert!(!log.contains("DEV-ONLY"), "{log}");
    assert!(!log.contains(&token) && !log.contains("a shared secret"), "a secret leaked:\n{log}");

    // Neither dev sign-in nor a key: refuses to start, and says how to fix it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dovecote-server"))
        .arg("--db")
        .arg(dir.path().join("db2"))
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "never claims to listen");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev-sign-in"));
    // Dev sign-in on a public address without the second flag: refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dovecote-server"))
        .arg("--db")
        .arg(dir.path().join("db3"))
        .args(["--addr", "0.0.0.0:0", "--dev-sign-in"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev-sign-in-anywhere"));
}

#[tokio::test]
async fn sign_ins_and_failed_authentications_are_limited_per_ip() {
    let server = TestServer::start_with(|c| c.ip_rate_limit = 5).await;
    let http = &server.http;
    for i in 0..5 {
        http.session(&format!("user{i}")).await;
    }
    let reply = http.post("/v1/session", None, r#"{"user":"user5"}"#).await;
    assert_eq!((reply.status, reply.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(reply.headers.contains_key("retry-after"));

    // Guessing tokens draws on the same budget: 429 instead of 401 once spent.
    let server = TestServer::start_with(|c| c.ip_rate_limit = 3).await;
    let http = &server.http;
    let alice = http.session("alice").await; // 1 of 3
    for _ in 0..2 {
        assert_eq!(http.get("/v1/pull", Some("s1.guess.guess")).await.status, StatusCode::UNAUTHORIZED);
    }
    let reply = http.get("/v1/pull", Some("s1.guess.guess")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(http.get("/v1/pull", None).await.status, StatusCode::TOO_MANY_REQUESTS);
    // A valid token is not an unauthenticated request: alice is unaffected.
    assert_eq!(http.pull(&alice, "").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.stop().await;
}
