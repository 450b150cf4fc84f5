//! A deadline on every collective: a process whose peer has died or stalled would otherwise
//! wait in the sum forever (NCCL and MPI both block without a timeout). A background thread
//! watches the collective in progress; past its deadline it prints which collective of which
//! rank waited how long, and ends the process with [`super::TIMEOUT_EXIT`], which ends the
//! job (mpirun, torchrun and srun stop the other processes when one fails).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the watched thread is waiting in, and since when.
#[derive(Debug)]
struct Waiting {
    what: String,
    since: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Option<Waiting>>,
    changed: Condvar,
}

/// The watching thread of one process; [`Watchdog::arm`] starts a deadline.
#[derive(Debug)]
pub struct Watchdog {
    shared: Arc<Shared>,
}

/// A running deadline; dropping it (the collective returned) disarms it.
#[derive(Debug)]
pub struct Armed<'a> {
    shared: &'a Shared,
}

impl Watchdog {
    /// Starts the watching thread of rank `rank`, allowing each collective `timeout`.
    pub fn start(rank: usize, timeout: Duration) -> Watchdog {
        Watchdog::with_expiry(rank, timeout, |message| {
            eprintln!("{message}");
            std::process::exit(super::TIMEOUT_EXIT);
        })
    }

    /// [`Watchdog::start`] with what to do at expiry (tests observe it instead of exiting).
    fn with_expiry(
        rank: usize,
        timeout: Duration,
        expire: impl FnOnce(String) + Send + 'static,
    ) -> Watchdog {
        let shared = Arc::new(Shared::default());
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("tinymim-watchdog".to_string())
            .spawn(move || {
                let mut waiting = watched.waiting.lock().expect("watchdog lock");
                loop {
                    let remaining = match &*waiting {
                        None => Duration::from_secs(3600),
                        Some(w) => match timeout.checked_sub(w.since.elapsed()) {
                            Some(left) => left,
                            None => {
                                let what = w.what.clone();
                                drop(waiting);
                                expire(format!(
                                    "error: rank {rank}: {what} did not complete within {} s: \
                                     another process of the job has died or stalled (see its \
                                     log; --collective-timeout sets the limit); ending the job",
                                    timeout.as_secs_f64()
                                ));
                                return;
                            }
                        },
                    };
                    waiting = watched
                        .changed
                        .wait_timeout(waiting, remaining)
                        .expect("watchdog lock")
                        .0;
                }
            })
            .expect("the OS can start a thread");
        Watchdog { shared }
    }

    /// Starts the deadline of the collective `what` (e.g. "the gradient sum of step 12").
    pub fn arm(&self, what: &str) -> Armed<'_> {
        *self.shared.waiting.lock().expect("watchdog lock") = Some(Waiting {
            what: what.to_string(),
            since: Instant::now(),
        });
        self.shared.changed.notify_one();
        Armed {
            shared: &self.shared,
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        *self.shared.waiting.lock().expect("watchdog lock") = None;
        self.shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_collective_past_its_deadline_is_reported_by_name_and_a_finished_one_is_not() {
        let (sender, receiver) = mpsc::channel();
        let dog = Watchdog::with_expiry(1, Duration::from_millis(300), move |m| {
            sender.send(m).unwrap()
        });
        for _ in 0..5 {
            let _armed = dog.arm("a quick sum");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Idle (disarmed) time never counts.
        std::thread::sleep(Duration::from_millis(500));
        assert!(receiver.try_recv().is_err(), "nothing expired");
        let armed = dog.arm("the gradient sum of step 7");
        let message = receiver
            .recv_timeout(Duration::from_secs(5))
            .expect("the deadline fires");
        drop(armed);
        assert!(
            message.contains("rank 1")
                && message.contains("the gradient sum of step 7")
                && message.contains("0.3 s"),
            "{message}"
        );
    }
}
