//! NATS as its clients expect: a `tls://` server with a self-signed certificate (made with
//! `openssl` at test time, trusted with `--nats-tls-ca`) that lets in only an NKey user
//! (`--nats-creds` with the user's seed); and clear errors when either is missing or wrong.

use std::path::Path;
use std::process::Command;

use common::command::Dir;
use common::server::{tiny_manifests, ServeProcess};

use super::*;

/// A self-signed certificate for 127.0.0.1 and its key, PEM files in `dir`.
fn self_signed(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_nkey_user_runs_jobs_and_a_missing_piece_is_a_clear_error() {
    let dir = Dir::new("fleet-secure");
    let (cert, key) = self_signed(dir.path());
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
        &["cannot connect to NATS at tls://127.0.0.1"],
    );
    // Trusted, but no credentials: the server refuses.
    refused(
        &["--nats-tls-ca", &cert],
        &["cannot connect to NATS at tls://127.0.0.1"],
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
        &cert,
    ];
    let api = ServeProcess::start(&secure);
    let _worker =
        ServeProcess::launch(&["worker"], tiny_manifests, &secure, "beeswax worker ready");
    let id = submit(&api.url, job("a secure bee", 2)).await;
    wait_status(&api.url, &id, "completed").await;
    let health = get_json(&api.at("/health")).await;
    assert_eq!(health["nats"]["connected"], true, "{health}");
}
