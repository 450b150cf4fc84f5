//! A real S3-compatible server for tests (moto's, started from the cache's Python by
//! `formats/tests/s3_server.py`), shared by the formats, extract and train test binaries
//! (`#[path]`-included). One server per test binary; every test takes its own prefix of the
//! bucket [`BUCKET`]. The server exits when the test binary does (its standard input closes).
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The bucket every test store lives in.
pub const BUCKET: &str = "tinymim-test";

/// A running server.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: Mutex<Child>,
}

/// The workspace's asset cache (`$TINYMIM_CACHE` or `<workspace>/.cache/tinymim`).
fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/tinymim"))
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a workspace member")
        .to_path_buf()
}

/// The cache's Python (`<cache>/venv/bin/python`, with zarr-python, s3fs, boto3 and moto).
pub fn python() -> PathBuf {
    let python = cache().join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the cache (zarr-python, s3fs, moto)",
        python.display()
    );
    python
}

/// The test binary's server, started on first use; the AWS variables of this process are set
/// to reach it, so that stores opened in-process use it.
pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let script = workspace().join("formats/tests/s3_server.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's S3 server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line.trim().to_string();
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "moto's server did not start: {line:?}"
        );
        let server = S3Server {
            endpoint,
            _child: Mutex::new(child),
        };
        for (key, value) in server.env() {
            // Set once, before any store is opened; every test of the binary uses these.
            std::env::set_var(key, value);
        }
        server
    })
}

impl S3Server {
    /// The standard AWS variables that point a client (ours, boto3, s3fs) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ]
    }

    /// A fresh `s3://` URL no other test uses: `s3://tinymim-test/<test>-<n>/relations.zarr`.
    pub fn fresh_url(&self, test: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PathBuf::from(format!(
            "s3://{BUCKET}/{test}-{}-{n}/relations.zarr",
            std::process::id()
        ))
    }

    /// Runs a Python snippet with boto3's client `s3` (pointed at this server) defined;
    /// returns its standard output. Panics with its standard error on failure.
    pub fn boto3(&self, code: &str) -> String {
        let program = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url={:?}, \
             aws_access_key_id='testing', aws_secret_access_key='testing', \
             region_name='us-east-1')\n{code}",
            self.endpoint
        );
        let out = Command::new(python())
            .arg("-c")
            .arg(program)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
