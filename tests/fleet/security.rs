//! NATS as its clients expect: a `tls://` server with a certificate of a private authority
//! (made with `openssl` at test time, trusted with `--nats-tls-ca`) that lets in only an NKey user
//! (`--nats-creds` with the user's seed); and clear errors when either is missing or wrong.

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
