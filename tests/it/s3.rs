//! A real S3-compatible server for the tests, and the tests of
//! [`Storage`] against it.
//!
//! The server is moto's (`moto[server]`, installed into the test venv by
//! `tests/setup.sh` from `tests/sdk/requirements.txt`), listening on
//! `127.0.0.1` on a port the kernel picks, keeping its objects in memory.
//!
//! For other test files:
//! - [`shared()`] is the one server of this test binary, started on first
//!   use (about half a second) and set up so that in-process
//!   `Storage::open(&shared().url(prefix))` talks to it: the `AWS_*`
//!   variables are set in this process once, before it returns. Tests share
//!   its bucket and keep apart by prefix: use the test's name.
//! - [`storage()`] is that `Storage::open` for a prefix.
//! - [`S3Server::env`] gives the variables a child process (a `homeostat`
//!   binary) needs to reach a server, [`S3Server::url`] its location.
//! - [`S3Server::start`] starts a server of one's own, stopped when dropped:
//!   for child processes only, since in-process `Storage::open` reads the
//!   process's variables, which point at [`shared()`].
//!
//! The venv missing is a failure, not a skip, as for the SDK tests.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeostat::memory::{Storage, StorageError};

use crate::common;

/// The bucket every server starts with.
pub const BUCKET: &str = "homeostat-test";

/// How long a server may take to start and answer: a cold start imports
/// moto and Flask from disk, which takes about half a second when warm.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// moto's server without its command line: the same WSGI app as
/// `moto_server`, but
/// - single-threaded: moto checks `If-None-Match: *` and then stores,
///   unlocked, so with a thread per request two racing creates can both
///   win. Real S3 decides them atomically; serving one request at a time
///   gives moto that atomicity (its responses close the connection, so
///   a waiting client never holds the server).
/// - exiting when its stdin closes, i.e. when the test process is gone,
///   which is how the [`shared()`] server (a static, never dropped) stops.
const LAUNCHER: &str = r#"
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)

def exit_with_parent():
    sys.stdin.buffer.read()
    os._exit(0)

threading.Thread(target=exit_with_parent, daemon=True).start()
run_simple("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app),
           threaded=False,
           request_handler=MotoRequestHandler)
"#;

/// A running moto S3 server with the bucket [`BUCKET`]; killed when dropped.
pub struct S3Server {
    child: Child,
    /// Held open so the launcher sees its parent alive; see [`LAUNCHER`].
    _stdin: ChildStdin,
    address: SocketAddr,
    /// The server's log so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// The one server of this test binary, with the process's `AWS_*` variables
/// pointing at it (see the module doc).
pub fn shared() -> &'static S3Server {
    static SHARED: OnceLock<S3Server> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = S3Server::start();
        for (key, value) in server.env() {
            // SAFETY: set_var is unsound only against a concurrent read of
            // the environment. Reads through std::env (how object_store's
            // `from_env` reads `AWS_*`) take the same lock as set_var. The
            // variables are set once, inside `get_or_init`, before any S3
            // storage of this process exists: every test that opens one
            // calls `shared()` first and waits here. What remains is C code
            // calling `getenv` in another test's thread at this instant
            // (e.g. name resolution); these tests use IP addresses.
            unsafe { std::env::set_var(key, value) };
        }
        server
    })
}

/// Storage under `prefix` of the [`shared()`] server's bucket.
pub fn storage(prefix: &str) -> Storage {
    let url = shared().url(prefix);
    Storage::open(&url).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

impl S3Server {
    /// Starts a server and creates [`BUCKET`]; panics with the server's log
    /// if it does not answer within [`START_DEADLINE`].
    pub fn start() -> Self {
        let deadline = Instant::now() + START_DEADLINE;
        let python = common::python();
        let mut child = Command::new(&python)
            .args(["-c", LAUNCHER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("stdin piped");
        let stderr = child.stderr.take().expect("stderr piped");

        // Werkzeug prints the port it bound once it listens. The thread keeps
        // reading after that: a full pipe would block the server's request
        // log, and with it the server.
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = bound_address(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(address);
                }
                let mut lines = lines.lock().expect("log lock");
                lines.push(line);
                if lines.len() > 200 {
                    lines.drain(..100);
                }
            }
        });
        let mut server = Self {
            child,
            _stdin: stdin,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(address) => server.address = address,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "moto did not start within {START_DEADLINE:?}:\n{}",
                server.log()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "moto exited before listening (tests/setup.sh installs it):\n{}",
                server.log()
            ),
        }
        server.create_bucket(BUCKET, deadline);
        server
    }

    /// `http://127.0.0.1:port`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The location of `prefix` in [`BUCKET`]: `s3://homeostat-test/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The variables `object_store`'s `AmazonS3Builder::from_env` needs to
    /// reach this server: give them to a child process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint().as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "homeostat-test"),
            ("AWS_SECRET_ACCESS_KEY", "homeostat-test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `PUT /{name}`, retried until `deadline` while the server does not
    /// accept connections. moto lets an unsigned request create a bucket.
    /// Plain std networking so that this works from sync and async tests
    /// alike (a `OnceLock` initialiser cannot await).
    fn create_bucket(&self, name: &str, deadline: Instant) {
        let status = loop {
            match put_bucket(self.address, name) {
                Ok(status) => break status,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!(
                    "moto at {} did not answer within {START_DEADLINE:?}: {e}\n{}",
                    self.address,
                    self.log()
                ),
            }
        };
        assert_eq!(status, 200, "PUT /{name} on moto: {status}\n{}", self.log());
    }

    /// The server's recent log lines.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn bound_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("Running on http://").nth(1)?;
    rest.split(|c: char| c.is_whitespace() || c == '/')
        .next()?
        .parse()
        .ok()
}

/// One `PUT /{bucket}`; the HTTP status.
fn put_bucket(address: SocketAddr, bucket: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
}

// ---------------------------------------------------------------------------
// Storage on S3

fn names(storage: &Storage, objects: &[object_store::ObjectMeta]) -> Vec<String> {
    objects
        .iter()
        .map(|m| storage.relative(&m.location))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_create_then_get_round_trips() {
    let storage = storage("s3_create_then_get_round_trips");
    let path = storage.path(&["memory", "n1", "000001"]);
    // Every byte value, and more than one TCP segment.
    let body: Bytes = (0..=255u8).cycle().take(200_000).collect::<Vec<_>>().into();
    storage.create(&path, body.clone()).await.expect("create");
    assert_eq!(storage.get(&path).await.expect("get"), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_second_create_fails_and_keeps_the_first() {
    let storage = storage("s3_second_create_fails_and_keeps_the_first");
    let path = storage.path(&["memory", "n1", "000001"]);
    storage
        .create(&path, Bytes::from_static(b"first"))
        .await
        .expect("first create");
    let again = storage.create(&path, Bytes::from_static(b"second")).await;
    assert!(
        matches!(&again, Err(StorageError::Exists { path: p }) if *p == path.to_string()),
        "{again:?}"
    );
    assert_eq!(storage.get(&path).await.expect("get"), "first");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_concurrent_creates_of_one_path_have_one_winner() {
    // Separate handles: separate connection pools, so the two requests are
    // on the wire at the same time.
    let a = storage("s3_concurrent_creates_of_one_path_have_one_winner");
    let b = storage("s3_concurrent_creates_of_one_path_have_one_winner");
    // Large bodies keep both requests in flight for a while; many rounds
    // give a lost atomicity many chances to show.
    let body = |who: u8| -> Bytes { vec![who; 256 * 1024].into() };
    for round in 0..20 {
        let path = a.path(&["race", &format!("{round:03}")]);
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let racer = |storage: Storage, who: u8| {
            let (path, start) = (path.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                storage.create(&path, body(who)).await
            })
        };
        let (ra, rb) = (racer(a.clone(), b'a'), racer(b.clone(), b'b'));
        let (ra, rb) = (ra.await.expect("task"), rb.await.expect("task"));
        let winner = match (&ra, &rb) {
            (Ok(()), Err(StorageError::Exists { .. })) => b'a',
            (Err(StorageError::Exists { .. }), Ok(())) => b'b',
            _ => panic!("round {round}: not exactly one winner: {ra:?} / {rb:?}"),
        };
        let stored = a.get(&path).await.expect("get");
        assert!(
            stored == body(winner),
            "round {round}: the stored object is not the winner's ({} bytes)",
            stored.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_list_is_sorted_and_stays_under_the_prefix() {
    let storage = storage("s3_list_is_sorted_and_stays_under_the_prefix");
    // Written out of order, with a neighbour whose name shares the prefix's
    // first letters but is another folder.
    for name in [
        "memory/n2/b",
        "memory/n1/c",
        "memory/n2/a",
        "memory/n1/a",
        "memoryx/z",
    ] {
        storage
            .create(&storage.path(&[name]), Bytes::from(name.to_owned()))
            .await
            .expect("create");
    }
    let listed = storage
        .list(&storage.path(&["memory"]))
        .await
        .expect("list");
    assert_eq!(
        names(&storage, &listed),
        ["memory/n1/a", "memory/n1/c", "memory/n2/a", "memory/n2/b"]
    );
    let folders = storage
        .folders(&storage.path(&["memory"]))
        .await
        .expect("folders");
    let folders: Vec<String> = folders.iter().map(|p| storage.relative(p)).collect();
    assert_eq!(folders, ["memory/n1", "memory/n2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_delete_removes_from_list_and_get() {
    let storage = storage("s3_delete_removes_from_list_and_get");
    let keep = storage.path(&["memory", "keep"]);
    let gone = storage.path(&["memory", "gone"]);
    for path in [&keep, &gone] {
        storage
            .create(path, Bytes::from_static(b"x"))
            .await
            .expect("create");
    }
    storage.delete(&gone).await.expect("delete");
    let listed = storage
        .list(&storage.path(&["memory"]))
        .await
        .expect("list");
    assert_eq!(names(&storage, &listed), ["memory/keep"]);
    let get = storage.get(&gone).await;
    assert!(
        matches!(
            &get,
            Err(StorageError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            })
        ),
        "{get:?}"
    );
    // Deleting what is not there is not an error, and the name is free again.
    storage.delete(&gone).await.expect("delete again");
    storage
        .create(&gone, Bytes::from_static(b"y"))
        .await
        .expect("create after delete");
    assert_eq!(storage.get(&gone).await.expect("get"), "y");
}

#[test]
fn s3_own_server_stops_when_dropped() {
    let server = S3Server::start();
    let address = server.address;
    assert_eq!(put_bucket(address, "another-bucket").expect("answers"), 200);
    drop(server);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "moto still listens on {address} after drop"
    );
}
