//! NATS as its clients expect: a `tls://` server with a certificate of a private authority
//! (made with `openssl` at test time, trusted with `--nats-tls-ca`) that lets in only an NKey user
//! (`--nats-creds` with the user's seed); a server in operator mode that lets in a user with a
//! JWT `.creds` file as `nsc` writes it; and clear errors when either is missing or wrong.

use std::path::Path;
use std::process::Command;

use common::command::Dir;
use common::server::{tiny_manifests, ServeProcess};

use super::*;

/// Runs `openssl args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let made = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A private certificate authority (`ca.pem`) and a server certificate it signed for
/// 127.0.0.1 (`server.pem`, `server.key`), in `dir`; returns their paths.
fn certificates(dir: &Path) -> (String, String, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=beeswax test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    let path = |name: &str| dir.join(name).display().to_string();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_nkey_user_runs_jobs_and_a_missing_piece_is_a_clear_error() {
    let dir = Dir::new("fleet-secure");
    let (ca, cert, key) = certificates(dir.path());
    let user = nkeys::KeyPair::new_user();
    let seed = dir.join("user.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let seed = seed.display().to_string();
    let nats = NatsServer::with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n\
         tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n",
        user.public_key()
    ));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let manifests = tiny_manifests(dir.path());
    let refused = |extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "worker",
            "--nats",
            url.as_str(),
            "--nats-connect-timeout",
            "1",
        ];
        args.extend_from_slice(extra);
        TestCommand::new(dir.path())
            .manifests(&manifests)
            .args(args)
            .assert_fails_with(needles);
    };
    // The server's certificate is not trusted without --nats-tls-ca.
    refused(
        &["--nats-creds", &seed],
        &[
            "cannot connect to NATS at tls://127.0.0.1",
            "certificate",
            "--nats-tls-ca FILE",
        ],
    );
    // Trusted, but no credentials: the server refuses.
    refused(
        &["--nats-tls-ca", &ca],
        &[
            "cannot connect to NATS at tls://127.0.0.1",
            "authorization",
            "--nats-creds FILE",
        ],
    );
    // A credentials file that is neither form, and a CA file that is not there.
    let junk = dir.join("junk.creds");
    std::fs::write(&junk, "hello").unwrap();
    let junk = junk.display().to_string();
    refused(&["--nats-creds", &junk], &[&junk, "neither a .creds file"]);
    refused(
        &["--nats-tls-ca", "/nonexistent/ca.pem"],
        &["/nonexistent/ca.pem", "--nats-tls-ca"],
    );
    // Both: an API node and a worker run a job.
    let secure = [
        "--nats",
        url.as_str(),
        "--nats-creds",
        &seed,
        "--nats-tls-ca",
        &ca,
    ];
    let api = ServeProcess::start(&secure);
    let _worker =
        ServeProcess::launch(&["worker"], tiny_manifests, &secure, "beeswax worker ready");
    let id = submit(&api.url, job("a secure bee", 2)).await;
    wait_status(&api.url, &id, "completed").await;
    let health = get_json(&api.at("/health")).await;
    assert_eq!(health["nats"]["connected"], true, "{health}");
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, issued and signed by `issuer`, whose subject is
/// `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": format!("BEESWAX{}", subject.chars().take(20).collect::<String>()),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_creds_file_as_nsc_writes_it_runs_jobs() {
    // Decentralised auth as `nsc` sets it up: an operator, an account with JetStream, a user
    // whose JWT the account signed; nats-server trusts the operator and preloads the account.
    let dir = Dir::new("fleet-jwt");
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "beeswax-test",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1,
        "streams": -1, "consumer": -1});
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "fleet",
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "beeswax",
        json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1,
               "payload": -1}),
    );
    let creds = dir.join("beeswax.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let creds = creds.display().to_string();
    let nats = NatsServer::with_config(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}\n",
        account.public_key(),
        sys = system.public_key(),
    ));
    let url = format!("nats://127.0.0.1:{}", nats.port);
    // Without the credentials the server refuses, and the error says which flag fixes it.
    let manifests = tiny_manifests(dir.path());
    TestCommand::new(dir.path())
        .manifests(&manifests)
        .args([
            "worker",
            "--nats",
            url.as_str(),
            "--nats-connect-timeout",
            "1",
        ])
        .assert_fails_with(&["cannot connect to NATS", "--nats-creds FILE"]);
    let fleet = ["--nats", url.as_str(), "--nats-creds", &creds];
    let api = ServeProcess::start(&fleet);
    let _worker = ServeProcess::launch(&["worker"], tiny_manifests, &fleet, "beeswax worker ready");
    let id = submit(&api.url, job("a bee with a JWT", 2)).await;
    wait_status(&api.url, &id, "completed").await;
}
