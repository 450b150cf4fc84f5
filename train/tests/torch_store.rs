//! The NCCL id's hand-off through torchrun's store: `dist::rendezvous` against a real PyTorch
//! c10d `TCPStore` (the server torchrun's agent runs on `MASTER_PORT`), started by a Python
//! with torch named by `TINYMIM_TORCH_PYTHON`. PyTorch's PyPI wheels pull in the CUDA libraries
//! (gigabytes), so the test command has none and the test is ignored there:
//! `TINYMIM_TORCH_PYTHON=/path/to/python cargo test -p tinymim-train --test torch_store -- --ignored`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tinymim_formats::launch::{Launch, Launcher};
use tinymim_train::dist::rendezvous::hand_off;

/// Serves a TCPStore on a free port, prints the port, then answers `get KEY` lines on stdin with
/// the value's hex (or `missing`).
const STORE_SERVER: &str = r#"
import datetime, sys
from torch.distributed import TCPStore
store = TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=60), wait_for_workers=False)
print(store.port, flush=True)
for line in sys.stdin:
    key = line.split()[1]
    print(store.get(key).hex() if store.check([key]) else "missing", flush=True)
"#;

#[test]
#[ignore = "needs TINYMIM_TORCH_PYTHON, a Python with torch (not in the test command: see the header)"]
fn ranks_meet_in_a_real_torch_tcpstore_under_torchruns_variables() {
    let python = std::env::var_os("TINYMIM_TORCH_PYTHON")
        .expect("TINYMIM_TORCH_PYTHON names a Python with torch (this test needs one)");
    let mut server = Command::new(python)
        .args(["-c", STORE_SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the Python runs");
    let mut answers = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    answers.read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().expect("the store prints its port");

    let vars = |name: &str| match name {
        "TORCHELASTIC_USE_AGENT_STORE" => Some("True".to_string()),
        "TORCHELASTIC_RUN_ID" => Some("run-7".to_string()),
        "TORCHELASTIC_RESTART_COUNT" => Some("2".to_string()),
        _ => None,
    };
    let rank = move |rank| Launch {
        launcher: Launcher::Torchrun,
        rank,
        world_size: 4,
        local_rank: rank,
        master: Some(("127.0.0.1".to_string(), port)),
    };
    let timeout = Duration::from_secs(20);
    // The other ranks wait before rank 0 has published: the store's wait, not a retry loop.
    let others: Vec<_> = (1..4)
        .map(|r| std::thread::spawn(move || hand_off(&rank(r), &vars, None, timeout)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let id: Vec<u8> = (0..128u32).map(|i| (i * 37 % 251) as u8).collect();
    assert_eq!(hand_off(&rank(0), &vars, Some(&id), timeout).unwrap(), id);
    for other in others {
        assert_eq!(other.join().unwrap().unwrap(), id);
    }
    // PyTorch's own client reads the key of this run and attempt (its keys carry a leading
    // `/`, which ours include).
    let mut stdin = server.stdin.take().unwrap();
    writeln!(stdin, "get tinymim/nccl-id/run-7/2").unwrap();
    line.clear();
    answers.read_line(&mut line).unwrap();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(line.trim(), hex);

    // A rank whose rank 0 never publishes ends at the deadline, naming the store.
    let lonely = |name: &str| match name {
        "TORCHELASTIC_RESTART_COUNT" => Some("3".to_string()),
        other => vars(other),
    };
    let err = hand_off(&rank(1), &lonely, None, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("did not publish") && err.contains(&port.to_string()),
        "{err}"
    );
    drop(stdin);
    let _ = server.kill();
    let _ = server.wait();
}
