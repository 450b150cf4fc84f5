//! The start-up handshake of a job without MPI (NCCL on GPUs): rank 0 serves a small payload
//! (NCCL's unique id) on `MASTER_ADDR:MASTER_PORT`, the other ranks connect, say who they are
//! and receive it. Rank 0 checks that every rank of the world came exactly once and that all
//! agree on its size, so that two jobs sharing a port, or a mistyped `WORLD_SIZE`, fail at
//! start-up with a message naming both values instead of deadlocking in the first sum.
//!
//! Wire format: a client sends `TMIM`, its rank and world size (u32 little-endian each); the
//! server answers one status byte (0 = accepted) followed by the payload length (u32) and the
//! payload, or a non-zero status and a UTF-8 reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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
    let mut stream = loop {
        let last = match resolve(master).and_then(|addr| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        }) {
            Ok(stream) => break stream,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(DistError::Rendezvous(format!(
                "rank {rank}: cannot reach rank 0 at MASTER_ADDR:MASTER_PORT = {where_} within \
                 {} s: {last}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let io = |e: std::io::Error| {
        DistError::Rendezvous(format!("rank {rank}: rendezvous with {where_} failed: {e}"))
    };
    stream
        .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(
            Duration::from_secs(1),
        )))
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

fn resolve(master: (&str, u16)) -> std::io::Result<SocketAddr> {
    master.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host name resolves to nothing")
    })
}

fn rendezvous_error(what: &str, e: std::io::Error) -> DistError {
    DistError::Rendezvous(format!("rank 0: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(server.contains("WORLD_SIZE=3") && server.contains("WORLD_SIZE=2"), "{server}");
        let client = client.join().unwrap().unwrap_err().to_string();
        assert!(client.contains("refused") && client.contains("WORLD_SIZE=3"), "{client}");
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
        assert!(err.contains("rank 2") && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
