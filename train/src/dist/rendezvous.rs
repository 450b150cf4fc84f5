//! The start-up hand-off of a job without MPI (NCCL on GPUs): rank 0's payload (NCCL's unique
//! id) reaches every other rank through the master, `MASTER_ADDR:MASTER_PORT`, in one of two
//! ways ([`hand_off`]):
//!
//! - **torchrun's store.** torchrun's agent already serves PyTorch's c10d `TCPStore` on
//!   `MASTER_PORT` and says so with `TORCHELASTIC_USE_AGENT_STORE=True` (PyTorch's own ranks
//!   meet there). Rank 0 sets a key of this run and attempt in it, the others wait for the key and
//!   get it ([`TorchStore`], the store's wire protocol: validate, set, wait, get).
//! - **Rank 0 listens** everywhere else (Slurm, variables set by hand): rank 0 serves the payload
//!   on `MASTER_PORT` ([`serve`]), the others connect, say who they are and receive it
//!   ([`fetch`]). Rank 0 checks that every rank of the world came exactly once and that all
//!   agree on its size, so that two jobs sharing a port, or a mistyped `WORLD_SIZE`, fail at
//!   start-up with a message naming both values instead of deadlocking in the first sum.
//!
//! Own wire format: a client sends `TMIM`, its rank and world size (u32 little-endian each); the
//! server answers one status byte (0 = accepted) followed by the payload length (u32) and the
//! payload, or a non-zero status and a UTF-8 reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tinymim_formats::launch::Launch;

use super::DistError;

const MAGIC: &[u8; 4] = b"TMIM";

/// Rank 0's side: accepts the `world - 1` other ranks on `listener` and hands each `payload`,
/// all within `timeout`.
pub fn serve(
    listener: &TcpListener,
    world: usize,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), DistError> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| rendezvous_error("cannot poll the rendezvous socket", e))?;
    let mut seen = vec![false; world];
    seen[0] = true;
    let mut waiting = world - 1;
    while waiting > 0 {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..world)
                        .filter(|&r| !seen[r])
                        .map(|r| r.to_string())
                        .collect();
                    return Err(DistError::Rendezvous(format!(
                        "rank 0: ranks {} did not connect within {} s",
                        missing.join(", "),
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(rendezvous_error("accept failed", e)),
        };
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(10))))
            .map_err(|e| rendezvous_error("cannot configure a connection", e))?;
        let mut hello = [0u8; 12];
        if stream.read_exact(&mut hello).is_err() || &hello[..4] != MAGIC {
            // Not one of ours (a port scanner, another program): ignore it.
            continue;
        }
        let rank = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes")) as usize;
        let their_world = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
        let refusal = if their_world != world {
            Some(format!(
                "rank {rank} says WORLD_SIZE={their_world}, rank 0 says WORLD_SIZE={world}"
            ))
        } else if rank == 0 || rank >= world {
            Some(format!("a process says RANK={rank} in a world of {world}"))
        } else if seen[rank] {
            Some(format!(
                "two processes say RANK={rank} (two jobs on one MASTER_PORT?)"
            ))
        } else {
            None
        };
        let reply = match &refusal {
            None => [&[0u8][..], &(payload.len() as u32).to_le_bytes(), payload].concat(),
            Some(reason) => [&[1u8][..], reason.as_bytes()].concat(),
        };
        let _ = stream.write_all(&reply);
        if let Some(reason) = refusal {
            return Err(DistError::Rendezvous(format!("rank 0: {reason}")));
        }
        seen[rank] = true;
        waiting -= 1;
    }
    Ok(())
}

/// A non-zero rank's side: connects to rank 0 at `master` (retrying until `timeout`, rank 0
/// may start later) and returns its payload.
pub fn fetch(
    master: (&str, u16),
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DistError> {
    let deadline = Instant::now() + timeout;
    let where_ = format!("{}:{}", master.0, master.1);
    let mut stream = connect_until(master, deadline).map_err(|last| {
        DistError::Rendezvous(format!(
            "rank {rank}: cannot reach rank 0 at MASTER_ADDR:MASTER_PORT = {where_} within {} \
             s: {last}",
            timeout.as_secs()
        ))
    })?;
    let io = |e: std::io::Error| {
        DistError::Rendezvous(format!("rank {rank}: rendezvous with {where_} failed: {e}"))
    };
    stream
        .set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        ))
        .map_err(io)?;
    let hello = [
        &MAGIC[..],
        &(rank as u32).to_le_bytes(),
        &(world as u32).to_le_bytes(),
    ]
    .concat();
    stream.write_all(&hello).map_err(io)?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).map_err(io)?;
    if status[0] != 0 {
        let mut reason = String::new();
        let _ = stream.read_to_string(&mut reason);
        return Err(DistError::Rendezvous(format!(
            "rank {rank}: rank 0 at {where_} refused: {reason}"
        )));
    }
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(io)?;
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut payload).map_err(io)?;
    Ok(payload)
}

/// Hands rank 0's `payload` to every rank of `launch` through its master and returns it (rank 0
/// passes `Some`, the others `None`), all within `timeout`. Where the master is torchrun's store
/// or rank 0 itself is read from `get` (the process environment; a map in tests): see the
/// module documentation.
pub fn hand_off(
    launch: &Launch,
    get: &dyn Fn(&str) -> Option<String>,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, DistError> {
    let (host, port) = launch.master.clone().ok_or_else(|| {
        DistError::Rendezvous(format!(
            "{} gives no MASTER_ADDR/MASTER_PORT for rank 0's hand-off",
            launch.launcher
        ))
    })?;
    let (rank, world) = (launch.rank, launch.world_size);
    if get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
        // One key per run and restart: a restarted attempt never reads a stale id.
        let key = format!(
            "/tinymim/nccl-id/{}/{}",
            get("TORCHELASTIC_RUN_ID").unwrap_or_default(),
            get("TORCHELASTIC_RESTART_COUNT").unwrap_or_default()
        );
        let deadline = Instant::now() + timeout;
        let mut store = TorchStore::connect((&host, port), rank, deadline)?;
        return match payload {
            Some(payload) => store.set(&key, payload).map(|()| payload.to_vec()),
            None => store.wait_get(&key, deadline),
        };
    }
    match payload {
        Some(payload) => {
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                DistError::Rendezvous(format!(
                    "rank 0: cannot listen on MASTER_PORT={port}: {e} (another job on this \
                     port? set MASTER_PORT to a free one)"
                ))
            })?;
            serve(&listener, world, payload, timeout)?;
            Ok(payload.to_vec())
        }
        None => fetch((&host, port), rank, world, timeout),
    }
}

/// A client of PyTorch's c10d `TCPStore` (the store torchrun's agent serves on `MASTER_PORT`),
/// speaking the part of its wire protocol a hand-off needs. Each request is a one-byte query
/// type and its arguments; strings and byte values go as a u64 length and the bytes, numbers
/// in the machine's byte order (little-endian on every platform PyTorch ships for).
pub struct TorchStore {
    stream: TcpStream,
    rank: usize,
    at: String,
}

/// Query types of the store (PyTorch's `QueryType`).
const STORE_VALIDATE: u8 = 0;
const STORE_SET: u8 = 1;
const STORE_GET: u8 = 3;
const STORE_WAIT: u8 = 6;
/// The number a new connection must send first (PyTorch's `validationMagicNumber`).
const STORE_MAGIC: u32 = 0x3C85_F7CE;
/// The store's answer to a wait once every key is set (`WaitResponseType::STOP_WAITING`).
const STORE_STOP_WAITING: u8 = 0;

impl TorchStore {
    /// Connects to the store at `master` as `rank` (retrying until `deadline`: the agent may
    /// still be starting) and validates the connection.
    pub fn connect(
        master: (&str, u16),
        rank: usize,
        deadline: Instant,
    ) -> Result<TorchStore, DistError> {
        let at = format!("{}:{}", master.0, master.1);
        let stream = connect_until(master, deadline).map_err(|last| {
            DistError::Rendezvous(format!(
                "rank {rank}: cannot reach torchrun's store at MASTER_ADDR:MASTER_PORT = {at}: \
                 {last}"
            ))
        })?;
        let mut store = TorchStore { stream, rank, at };
        let mut hello = vec![STORE_VALIDATE];
        hello.extend(STORE_MAGIC.to_le_bytes());
        store.send(&hello)?;
        Ok(store)
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let mut request = vec![STORE_SET];
        put_bytes(&mut request, key.as_bytes());
        put_bytes(&mut request, value);
        self.send(&request)
    }

    /// Waits until `key` is set (until `deadline` at most) and returns its value.
    pub fn wait_get(&mut self, key: &str, deadline: Instant) -> Result<Vec<u8>, DistError> {
        let mut wait = vec![STORE_WAIT];
        wait.extend(1u64.to_le_bytes());
        put_bytes(&mut wait, key.as_bytes());
        self.send(&wait)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(100))))
            .map_err(|e| self.failed("configure", e))?;
        let mut answer = [0u8; 1];
        self.stream.read_exact(&mut answer).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                DistError::Rendezvous(format!(
                    "rank {}: rank 0 did not publish the NCCL id in torchrun's store at {} \
                     in time (has rank 0 failed? see its log)",
                    self.rank, self.at
                ))
            } else {
                self.failed("wait in", e)
            }
        })?;
        if answer[0] != STORE_STOP_WAITING {
            return Err(DistError::Rendezvous(format!(
                "rank {}: torchrun's store at {} answered a wait with {}",
                self.rank, self.at, answer[0]
            )));
        }
        let mut request = vec![STORE_GET];
        put_bytes(&mut request, key.as_bytes());
        self.send(&request)?;
        let mut len = [0u8; 8];
        self.stream
            .read_exact(&mut len)
            .map_err(|e| self.failed("read from", e))?;
        let len = u64::from_le_bytes(len);
        if len > 1 << 20 {
            return Err(DistError::Rendezvous(format!(
                "rank {}: torchrun's store at {} sent a {len}-byte value for {key}",
                self.rank, self.at
            )));
        }
        let mut value = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut value)
            .map_err(|e| self.failed("read from", e))?;
        Ok(value)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), DistError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| self.failed("write to", e))
    }

    fn failed(&self, what: &str, e: std::io::Error) -> DistError {
        DistError::Rendezvous(format!(
            "rank {}: cannot {what} torchrun's store at {}: {e}",
            self.rank, self.at
        ))
    }
}

/// Appends `bytes` as the store sends strings and values: a u64 length, then the bytes.
fn put_bytes(request: &mut Vec<u8>, bytes: &[u8]) {
    request.extend((bytes.len() as u64).to_le_bytes());
    request.extend_from_slice(bytes);
}

/// A connection to `master`, retried until `deadline` (the other side may start later), or the
/// last attempt's error.
fn connect_until(master: (&str, u16), deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        let attempt = resolve(master)
            .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
        if attempt.is_ok() || Instant::now() >= deadline {
            return attempt;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn resolve(master: (&str, u16)) -> std::io::Result<SocketAddr> {
    master.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host name resolves to nothing",
        )
    })
}

fn rendezvous_error(what: &str, e: std::io::Error) -> DistError {
    DistError::Rendezvous(format!("rank 0: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinymim_formats::launch::Launcher;

    /// Rank `rank` of `world` with rank 0 at 127.0.0.1:`port`.
    fn torchrun_rank(rank: usize, world: usize, port: u16) -> Launch {
        Launch {
            launcher: Launcher::Torchrun,
            rank,
            world_size: world,
            local_rank: rank,
            master: Some(("127.0.0.1".to_string(), port)),
        }
    }

    #[test]
    fn without_torchruns_store_rank_zero_listens_and_hands_off_its_payload() {
        let port = {
            let (l, port) = listener();
            drop(l);
            port
        };
        let none = |_: &str| None;
        let others: Vec<_> = (1..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    hand_off(
                        &torchrun_rank(rank, 3, port),
                        &none,
                        None,
                        Duration::from_secs(10),
                    )
                })
            })
            .collect();
        let payload = b"the id".to_vec();
        let mine = hand_off(
            &torchrun_rank(0, 3, port),
            &none,
            Some(&payload),
            Duration::from_secs(10),
        );
        assert_eq!(mine.unwrap(), payload);
        for other in others {
            assert_eq!(other.join().unwrap().unwrap(), payload);
        }
    }

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[test]
    fn every_rank_receives_rank_zeros_payload() {
        let (l, port) = listener();
        let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let clients: Vec<_> = (1..4)
            .map(|rank| {
                std::thread::spawn(move || {
                    fetch(("127.0.0.1", port), rank, 4, Duration::from_secs(10))
                })
            })
            .collect();
        serve(&l, 4, &payload, Duration::from_secs(10)).unwrap();
        for c in clients {
            assert_eq!(c.join().unwrap().unwrap(), payload);
        }
    }

    #[test]
    fn a_rank_that_disagrees_on_the_world_is_refused_by_both_sides() {
        let (l, port) = listener();
        let client =
            std::thread::spawn(move || fetch(("127.0.0.1", port), 1, 3, Duration::from_secs(10)));
        let server = serve(&l, 2, b"id", Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            server.contains("WORLD_SIZE=3") && server.contains("WORLD_SIZE=2"),
            "{server}"
        );
        let client = client.join().unwrap().unwrap_err().to_string();
        assert!(
            client.contains("refused") && client.contains("WORLD_SIZE=3"),
            "{client}"
        );
    }

    #[test]
    fn missing_ranks_and_an_absent_master_time_out_with_names() {
        let (l, port) = listener();
        let err = serve(&l, 3, b"id", Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ranks 1, 2 did not connect"), "{err}");
        drop(l);
        let err = fetch(("127.0.0.1", port), 2, 3, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rank 2") && err.contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
