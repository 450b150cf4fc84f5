//! What the process launcher says about this process: its rank in a job of several processes
//! (one per GPU), the GPU that is its own, and — for `extract` — its part of the images.
//!
//! The launchers clusters already have describe each process in environment variables; the
//! first that does wins:
//!
//! 1. **torchrun**: `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (default 0), `MASTER_ADDR`,
//!    `MASTER_PORT` (both required for more than one process). torchrun inside a Slurm job
//!    wins over Slurm's own variables.
//! 2. **Open MPI** (`mpirun`): `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//!    `OMPI_COMM_WORLD_LOCAL_RANK` (default 0); the master from `MASTER_ADDR`/`MASTER_PORT`
//!    when both are set.
//! 3. **Slurm** (a task of `srun`, or the batch step of `sbatch`, which has `SLURM_PROCID=0` and
//!    no `SLURM_NTASKS` unless `--ntasks` is given): `SLURM_PROCID`, `SLURM_NTASKS`,
//!    `SLURM_LOCALID` (default 0). The master is `MASTER_ADDR`, else the first host of
//!    `SLURM_STEP_NODELIST` (else `SLURM_JOB_NODELIST`, see [`first_host`]); its port is
//!    `MASTER_PORT`, else 20000 + `SLURM_JOB_ID` mod 10000, so that every task of a job agrees
//!    on it without talking and two jobs on one node rarely collide.
//! 4. Otherwise **one process**.
//!
//! Variables that are set but empty count as unset. A number that does not parse, a rank
//! without its world size (or the reverse), a world of 0 processes or a rank not below the world
//! size is an error naming the variables and their values, never a silent single process.
//!
//! [`extraction_part`] combines that world with a Slurm job array (`SLURM_ARRAY_TASK_*`), so
//! that every process of every array job extracts its own part of the images.

use std::fmt;

/// Which launcher's variables described this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: one process.
    Single,
    /// torchrun (or anything else that sets `RANK`/`WORLD_SIZE`).
    Torchrun,
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`).
    Mpi,
    /// A Slurm task (`SLURM_PROCID`/`SLURM_NTASKS`).
    Slurm,
}

impl Launcher {
    /// The variable holding this launcher's rank, for messages (`None` for one process).
    fn rank_variable(self) -> Option<&'static str> {
        match self {
            Launcher::Single => None,
            Launcher::Torchrun => Some(RANK),
            Launcher::Mpi => Some(OMPI_RANK),
            Launcher::Slurm => Some(SLURM_PROCID),
        }
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Single => "one process",
            Launcher::Torchrun => "torchrun (RANK/WORLD_SIZE)",
            Launcher::Mpi => "mpirun (OMPI_COMM_WORLD_*)",
            Launcher::Slurm => "Slurm (SLURM_PROCID/SLURM_NTASKS)",
        })
    }
}

/// One process's place in a job of `world_size` processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Whose variables said so.
    pub launcher: Launcher,
    /// This process, `0 ≤ rank < world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// This process among those on its machine (its GPU, see [`local_gpu`]).
    pub local_rank: usize,
    /// Where rank 0 listens for the others: `MASTER_ADDR:MASTER_PORT` (Slurm: the first host of
    /// the job's node list and a port from the job id, see the module documentation); `None`
    /// for one process, and for Open MPI and Slurm when they do not give one.
    pub master: Option<(String, u16)>,
}

/// Why the launcher's variables do not describe a process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A variable that must hold a whole number does not.
    #[error("{variable}={value:?} is not a whole number ≥ 0")]
    NotANumber {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// One of a pair of variables a launcher sets together is missing.
    #[error("{set}={value} is set but {unset} is not; a launcher sets both")]
    Incomplete {
        /// The variable that is set.
        set: &'static str,
        /// Its value.
        value: String,
        /// The variable that is missing.
        unset: &'static str,
    },
    /// The world has no processes.
    #[error("{variable}=0: a job has at least one process")]
    EmptyWorld {
        /// The world-size variable.
        variable: &'static str,
    },
    /// The rank is not below the world size.
    #[error("{rank_variable}={rank} is not below {size_variable}={size}")]
    RankOutOfRange {
        /// The rank variable.
        rank_variable: &'static str,
        /// Its value.
        rank: usize,
        /// The world-size variable.
        size_variable: &'static str,
        /// Its value.
        size: usize,
    },
    /// `MASTER_PORT` is not a TCP port.
    #[error("MASTER_PORT={value:?} is not a TCP port (1 to 65535)")]
    BadPort {
        /// Its value.
        value: String,
    },
    /// torchrun describes several processes but not where rank 0 listens.
    #[error(
        "RANK/WORLD_SIZE describe {world_size} processes but {missing} not set: the ranks \
         meet at MASTER_ADDR:MASTER_PORT (torchrun sets both)"
    )]
    NoMaster {
        /// Processes in the job.
        world_size: usize,
        /// `MASTER_ADDR is`, `MASTER_PORT is` or `MASTER_ADDR and MASTER_PORT are`.
        missing: &'static str,
    },
    /// The Slurm array task is not one of a dense range of indices.
    #[error(
        "SLURM_ARRAY_TASK_ID={id} is no task of an evenly stepped array with \
         SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_STEP={step} and \
         SLURM_ARRAY_TASK_COUNT={count} ((ID − MIN) / STEP must be a whole number below COUNT): \
         the array must be a dense range like --array=0-7"
    )]
    SparseArray {
        /// `SLURM_ARRAY_TASK_ID`.
        id: usize,
        /// `SLURM_ARRAY_TASK_MIN`.
        min: usize,
        /// `SLURM_ARRAY_TASK_STEP` (1 when unset).
        step: usize,
        /// `SLURM_ARRAY_TASK_COUNT`.
        count: usize,
    },
    /// Array jobs × processes per job does not fit in 64 bits.
    #[error(
        "SLURM_ARRAY_TASK_COUNT={array_count} array jobs × {world_size} processes each is more \
         parts than fit in 64 bits"
    )]
    TooManyParts {
        /// `SLURM_ARRAY_TASK_COUNT`.
        array_count: usize,
        /// Processes per array job.
        world_size: usize,
    },
}

/// A variable lookup: `std::env::var(name).ok()` in a process, a map in tests.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

const RANK: &str = "RANK";
const WORLD_SIZE: &str = "WORLD_SIZE";
const LOCAL_RANK: &str = "LOCAL_RANK";
const MASTER_ADDR: &str = "MASTER_ADDR";
const MASTER_PORT: &str = "MASTER_PORT";
const OMPI_RANK: &str = "OMPI_COMM_WORLD_RANK";
const OMPI_SIZE: &str = "OMPI_COMM_WORLD_SIZE";
const OMPI_LOCAL_RANK: &str = "OMPI_COMM_WORLD_LOCAL_RANK";
const SLURM_PROCID: &str = "SLURM_PROCID";
const SLURM_NTASKS: &str = "SLURM_NTASKS";
const SLURM_LOCALID: &str = "SLURM_LOCALID";
const SLURM_JOB_ID: &str = "SLURM_JOB_ID";
const ARRAY_ID: &str = "SLURM_ARRAY_TASK_ID";
const ARRAY_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
const ARRAY_MIN: &str = "SLURM_ARRAY_TASK_MIN";
const ARRAY_STEP: &str = "SLURM_ARRAY_TASK_STEP";

/// Slurm's master port when `MASTER_PORT` is unset: this plus the job id mod [`PORT_SPAN`].
const SLURM_PORT_BASE: u16 = 20000;
/// The span of Slurm's derived master ports.
const PORT_SPAN: usize = 10000;

impl Launch {
    /// One process, no launcher.
    pub fn single() -> Launch {
        Launch {
            launcher: Launcher::Single,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master: None,
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<Launch, LaunchError> {
        Launch::from_vars(&|name| std::env::var(name).ok())
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Launch, LaunchError> {
        let mut launch = world(get)?;
        launch.master = master(get, &launch)?;
        Ok(launch)
    }

    /// Whether the job has more than one process.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }
}

/// The launcher's world, without its master (which [`extraction_part`] does not need).
fn world(get: Vars) -> Result<Launch, LaunchError> {
    let with = |launcher, (rank, world_size), local: &'static str| {
        Ok(Launch {
            launcher,
            rank,
            world_size,
            local_rank: number(get, local)?.unwrap_or(0),
            master: None,
        })
    };
    if let Some(pair) = pair(get, RANK, WORLD_SIZE)? {
        return with(Launcher::Torchrun, pair, LOCAL_RANK);
    }
    if let Some(pair) = pair(get, OMPI_RANK, OMPI_SIZE)? {
        return with(Launcher::Mpi, pair, OMPI_LOCAL_RANK);
    }
    // Slurm's batch step has SLURM_PROCID=0 and no SLURM_NTASKS without --ntasks: one process.
    // SLURM_NTASKS alone (an `salloc` shell) is not a task of the job.
    if let Some(rank) = number(get, SLURM_PROCID)? {
        let size = match number(get, SLURM_NTASKS)? {
            Some(size) => size,
            None if rank == 0 => 1,
            None => {
                return Err(LaunchError::Incomplete {
                    set: SLURM_PROCID,
                    value: rank.to_string(),
                    unset: SLURM_NTASKS,
                })
            }
        };
        checked(SLURM_PROCID, rank, SLURM_NTASKS, size)?;
        return with(Launcher::Slurm, (rank, size), SLURM_LOCALID);
    }
    Ok(Launch::single())
}

/// Where rank 0 of `launch` listens, by its launcher's rule (module documentation).
fn master(get: Vars, launch: &Launch) -> Result<Option<(String, u16)>, LaunchError> {
    let addr = text(get, MASTER_ADDR);
    let port = text(get, MASTER_PORT).map(|p| port(&p)).transpose()?;
    match launch.launcher {
        Launcher::Single => Ok(None),
        Launcher::Torchrun => match (addr, port) {
            (Some(addr), Some(port)) => Ok(Some((addr, port))),
            (addr, port) if launch.is_distributed() => Err(LaunchError::NoMaster {
                world_size: launch.world_size,
                missing: match (addr, port) {
                    (None, None) => "MASTER_ADDR and MASTER_PORT are",
                    (None, _) => "MASTER_ADDR is",
                    _ => "MASTER_PORT is",
                },
            }),
            _ => Ok(None),
        },
        Launcher::Mpi => Ok(addr.zip(port)),
        Launcher::Slurm => {
            let addr = addr.or_else(|| {
                text(get, "SLURM_STEP_NODELIST")
                    .or_else(|| text(get, "SLURM_JOB_NODELIST"))
                    .and_then(|list| first_host(&list))
            });
            let port = match port {
                Some(port) => Some(port),
                None => {
                    number(get, SLURM_JOB_ID)?.map(|job| SLURM_PORT_BASE + (job % PORT_SPAN) as u16)
                }
            };
            Ok(addr.zip(port))
        }
    }
}

/// The CUDA ordinal for `--device cuda` (and `auto`) in this process: 0 when
/// `CUDA_VISIBLE_DEVICES` lists exactly one device (Slurm's `--gpus-per-task=1` leaves each task
/// its own), else the launcher's local rank (`LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_RANK`,
/// `SLURM_LOCALID`, the first that is a number), else 0.
pub fn local_gpu(get: &dyn Fn(&str) -> Option<String>) -> usize {
    let visible = text(get, "CUDA_VISIBLE_DEVICES");
    if visible.is_some_and(|v| v.split(',').filter(|d| !d.trim().is_empty()).count() == 1) {
        return 0;
    }
    [LOCAL_RANK, OMPI_LOCAL_RANK, SLURM_LOCALID]
        .iter()
        .find_map(|name| text(get, name).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The part of the images one `extract` process handles: `index` of `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractionPart {
    /// This part, `0 ≤ index < count`.
    pub index: u64,
    /// Number of parts.
    pub count: u64,
    /// Where it came from, for the log: e.g. `torchrun (RANK/WORLD_SIZE)` or
    /// `Slurm array task 3 of 8 × SLURM_PROCID 1 of 2`.
    pub source: String,
}

/// The extraction part of this process: the launcher's world (its master aside) combined with a
/// Slurm job array (`SLURM_ARRAY_TASK_ID`, `_COUNT`, `_MIN`, `_STEP`, default 1, which must
/// describe a dense range such as `--array=0-7` or `--array=8-15`). With both, array job `a` of
/// `A` with `W` processes each gives part `a · W + rank` of `A · W`. `None` for one process
/// outside an array.
pub fn extraction_part(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExtractionPart>, LaunchError> {
    let launch = world(get)?;
    let rank = launch
        .launcher
        .rank_variable()
        .map(|variable| format!("{variable} {} of {}", launch.rank, launch.world_size));
    let part = match (array_task(get)?, launch.is_distributed()) {
        (None, false) => return Ok(None),
        (None, true) => ExtractionPart {
            index: launch.rank as u64,
            count: launch.world_size as u64,
            source: launch.launcher.to_string(),
        },
        (Some((index, count, array)), distributed) => {
            let parts = (count as u64).checked_mul(launch.world_size as u64).ok_or(
                LaunchError::TooManyParts {
                    array_count: count,
                    world_size: launch.world_size,
                },
            )?;
            ExtractionPart {
                // index·W + rank < count·W, which fits.
                index: index as u64 * launch.world_size as u64 + launch.rank as u64,
                count: parts,
                source: match rank.filter(|_| distributed) {
                    Some(rank) => format!("{array} × {rank}"),
                    None => array,
                },
            }
        }
    };
    Ok(Some(part))
}

/// This array job's index and the array's task count, with a description, or `None` outside
/// an array.
fn array_task(get: Vars) -> Result<Option<(usize, usize, String)>, LaunchError> {
    let Some(id) = number(get, ARRAY_ID)? else {
        return Ok(None);
    };
    let needed = |name| {
        number(get, name)?.ok_or_else(|| LaunchError::Incomplete {
            set: ARRAY_ID,
            value: id.to_string(),
            unset: name,
        })
    };
    let (count, min) = (needed(ARRAY_COUNT)?, needed(ARRAY_MIN)?);
    let step = number(get, ARRAY_STEP)?.unwrap_or(1);
    let sparse = || LaunchError::SparseArray {
        id,
        min,
        step,
        count,
    };
    let offset = id.checked_sub(min).ok_or_else(sparse)?;
    if step == 0 || offset % step != 0 || offset / step >= count {
        return Err(sparse());
    }
    let index = offset / step;
    let mut source = format!("Slurm array task {index} of {count}");
    if index != id {
        source += &format!(" ({ARRAY_ID}={id})");
    }
    Ok(Some((index, count, source)))
}

/// First host of a Slurm node list: `node[01-04,07],gpu3` → `node01`, `a,b` → `a`,
/// `x-[9-12]` → `x-9`, `rack[1-2]-n[3-4]` → `rack1-n3`. `None` for an empty or malformed list.
pub fn first_host(nodelist: &str) -> Option<String> {
    let mut host = String::new();
    let mut rest = nodelist.trim();
    loop {
        // Up to the next bracket group or the end of the first host.
        let stop = rest.find(['[', ',']).unwrap_or(rest.len());
        host.push_str(&rest[..stop]);
        rest = &rest[stop..];
        if !rest.starts_with('[') {
            break;
        }
        let close = rest.find(']')?;
        let first = rest[1..close].split([',', '-']).next()?.trim();
        if first.is_empty() {
            return None;
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    (!host.is_empty() && !host.contains(']')).then_some(host)
}

/// The variable's value, trimmed, with empty as unset.
fn text(get: Vars, name: &str) -> Option<String> {
    get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The variable as a whole number, `None` when unset.
fn number(get: Vars, name: &'static str) -> Result<Option<usize>, LaunchError> {
    text(get, name)
        .map(|value| {
            value.parse().map_err(|_| LaunchError::NotANumber {
                variable: name,
                value,
            })
        })
        .transpose()
}

/// A port number from `MASTER_PORT`'s value.
fn port(value: &str) -> Result<u16, LaunchError> {
    value
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| LaunchError::BadPort {
            value: value.to_string(),
        })
}

/// A rank and world size set together, checked; `None` when neither is set.
fn pair(
    get: Vars,
    rank_variable: &'static str,
    size_variable: &'static str,
) -> Result<Option<(usize, usize)>, LaunchError> {
    match (number(get, rank_variable)?, number(get, size_variable)?) {
        (None, None) => Ok(None),
        (Some(rank), None) => Err(LaunchError::Incomplete {
            set: rank_variable,
            value: rank.to_string(),
            unset: size_variable,
        }),
        (None, Some(size)) => Err(LaunchError::Incomplete {
            set: size_variable,
            value: size.to_string(),
            unset: rank_variable,
        }),
        (Some(rank), Some(size)) => {
            checked(rank_variable, rank, size_variable, size)?;
            Ok(Some((rank, size)))
        }
    }
}

/// `rank < size` and `size > 0`, or the error naming both variables.
fn checked(
    rank_variable: &'static str,
    rank: usize,
    size_variable: &'static str,
    size: usize,
) -> Result<(), LaunchError> {
    if size == 0 {
        return Err(LaunchError::EmptyWorld {
            variable: size_variable,
        });
    }
    if rank >= size {
        return Err(LaunchError::RankOutOfRange {
            rank_variable,
            rank,
            size_variable,
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A lookup over `pairs`.
    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |name| map.get(name).map(|v| v.to_string())
    }

    fn launch(pairs: &[(&str, &str)]) -> Result<Launch, LaunchError> {
        Launch::from_vars(&vars(pairs))
    }

    fn part(pairs: &[(&str, &str)]) -> Result<Option<ExtractionPart>, LaunchError> {
        extraction_part(&vars(pairs))
    }

    fn error(result: Result<impl fmt::Debug, LaunchError>) -> String {
        result.unwrap_err().to_string()
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "3"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    const SLURM: [(&str, &str); 5] = [
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_ID", "123456"),
        ("SLURM_JOB_NODELIST", "gpu[07-10]"),
    ];

    #[test]
    fn no_launcher_is_one_process() {
        let one = launch(&[]).unwrap();
        assert_eq!(one, Launch::single());
        assert!(!one.is_distributed());
        assert_eq!(one.launcher.to_string(), "one process");
        // Empty values are unset.
        assert_eq!(launch(&[("RANK", ""), ("WORLD_SIZE", " ")]).unwrap(), one);
        assert_eq!(part(&[]).unwrap(), None);
    }

    #[test]
    fn torchrun_gives_rank_world_local_rank_and_master() {
        let l = launch(&TORCHRUN).unwrap();
        assert_eq!(
            l,
            Launch {
                launcher: Launcher::Torchrun,
                rank: 3,
                world_size: 8,
                local_rank: 3,
                master: Some(("10.0.0.1".into(), 29500)),
            }
        );
        assert!(l.is_distributed());
        assert_eq!(l.launcher.to_string(), "torchrun (RANK/WORLD_SIZE)");
        // LOCAL_RANK defaults to 0; one process needs no master.
        let one = launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert_eq!((one.local_rank, one.master, one.world_size), (0, None, 1));
    }

    #[test]
    fn torchrun_with_several_processes_needs_its_master() {
        let both = error(launch(&TORCHRUN[..3]));
        assert!(
            both.contains("MASTER_ADDR and MASTER_PORT are not set"),
            "{both}"
        );
        let port = error(launch(&TORCHRUN[..4]));
        assert!(
            port.contains("MASTER_PORT is not set") && port.contains("8 processes"),
            "{port}"
        );
        let mut no_addr = TORCHRUN.to_vec();
        no_addr.remove(3);
        assert!(error(launch(&no_addr)).contains("MASTER_ADDR is not set"));
        let mut bad = TORCHRUN.to_vec();
        bad[4] = ("MASTER_PORT", "70000");
        assert_eq!(
            error(launch(&bad)),
            "MASTER_PORT=\"70000\" is not a TCP port (1 to 65535)"
        );
        // Extraction needs no master.
        assert_eq!(part(&TORCHRUN[..3]).unwrap().unwrap().index, 3);
    }

    #[test]
    fn open_mpi_gives_its_world_and_a_master_only_when_set() {
        let mpi = [
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ];
        let l = launch(&mpi).unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world_size, l.local_rank, l.master),
            (Launcher::Mpi, 1, 4, 1, None)
        );
        assert_eq!(l.launcher.to_string(), "mpirun (OMPI_COMM_WORLD_*)");
        let with_master = [
            mpi.as_slice(),
            &[("MASTER_ADDR", "h"), ("MASTER_PORT", "1234")],
        ]
        .concat();
        assert_eq!(
            launch(&with_master).unwrap().master,
            Some(("h".into(), 1234))
        );
    }

    #[test]
    fn slurm_gives_its_world_and_derives_a_master() {
        let l = launch(&SLURM).unwrap();
        assert_eq!(
            l,
            Launch {
                launcher: Launcher::Slurm,
                rank: 5,
                world_size: 16,
                local_rank: 1,
                master: Some(("gpu07".into(), 20000 + 3456)),
            }
        );
        assert_eq!(l.launcher.to_string(), "Slurm (SLURM_PROCID/SLURM_NTASKS)");
        // The step's node list before the job's; MASTER_ADDR/MASTER_PORT before both.
        let step = [SLURM.as_slice(), &[("SLURM_STEP_NODELIST", "a[3-4],b")]].concat();
        assert_eq!(launch(&step).unwrap().master, Some(("a3".into(), 23456)));
        let given = [
            SLURM.as_slice(),
            &[("MASTER_ADDR", "head"), ("MASTER_PORT", "4000")],
        ]
        .concat();
        assert_eq!(launch(&given).unwrap().master, Some(("head".into(), 4000)));
        // No node list: no master, and no error.
        assert_eq!(launch(&SLURM[..4]).unwrap().master, None);
    }

    #[test]
    fn slurm_batch_step_without_ntasks_is_one_process() {
        let l = launch(&[("SLURM_PROCID", "0"), ("SLURM_JOB_ID", "7")]).unwrap();
        assert_eq!((l.launcher, l.rank, l.world_size), (Launcher::Slurm, 0, 1));
        assert!(!l.is_distributed());
        assert_eq!(
            error(launch(&[("SLURM_PROCID", "2")])),
            "SLURM_PROCID=2 is set but SLURM_NTASKS is not; a launcher sets both"
        );
        // SLURM_NTASKS alone (an salloc shell) is no task.
        assert_eq!(launch(&[("SLURM_NTASKS", "4")]).unwrap(), Launch::single());
    }

    #[test]
    fn torchrun_wins_over_open_mpi_and_slurm_and_mpi_over_slurm() {
        let all = [
            TORCHRUN.as_slice(),
            &SLURM,
            &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")],
        ]
        .concat();
        let l = launch(&all).unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world_size),
            (Launcher::Torchrun, 3, 8)
        );
        let mpi_in_slurm = [
            SLURM.as_slice(),
            &[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")],
        ]
        .concat();
        let l = launch(&mpi_in_slurm).unwrap();
        assert_eq!((l.launcher, l.rank, l.world_size), (Launcher::Mpi, 1, 2));
    }

    #[test]
    fn malformed_worlds_are_errors_naming_the_variables() {
        for (pairs, expected) in [
            (
                vec![("RANK", "3"), ("WORLD_SIZE", "2")],
                "RANK=3 is not below WORLD_SIZE=2",
            ),
            (
                vec![("RANK", "1")],
                "RANK=1 is set but WORLD_SIZE is not; a launcher sets both",
            ),
            (
                vec![("WORLD_SIZE", "2")],
                "WORLD_SIZE=2 is set but RANK is not; a launcher sets both",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "0")],
                "WORLD_SIZE=0: a job has at least one process",
            ),
            (
                vec![("RANK", "one"), ("WORLD_SIZE", "2")],
                "RANK=\"one\" is not a whole number ≥ 0",
            ),
            (
                vec![("OMPI_COMM_WORLD_RANK", "-1"), ("OMPI_COMM_WORLD_SIZE", "2")],
                "OMPI_COMM_WORLD_RANK=\"-1\" is not a whole number ≥ 0",
            ),
            (
                vec![("OMPI_COMM_WORLD_SIZE", "2")],
                "OMPI_COMM_WORLD_SIZE=2 is set but OMPI_COMM_WORLD_RANK is not; a launcher sets both",
            ),
            (
                vec![("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")],
                "SLURM_PROCID=4 is not below SLURM_NTASKS=4",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "x")],
                "LOCAL_RANK=\"x\" is not a whole number ≥ 0",
            ),
        ] {
            assert_eq!(error(launch(&pairs)), expected);
            assert_eq!(error(part(&pairs)), expected);
        }
    }

    #[test]
    fn a_distributed_world_is_the_extraction_part() {
        assert_eq!(
            part(&TORCHRUN).unwrap(),
            Some(ExtractionPart {
                index: 3,
                count: 8,
                source: "torchrun (RANK/WORLD_SIZE)".into()
            })
        );
        assert_eq!(part(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        let slurm = part(&SLURM).unwrap().unwrap();
        assert_eq!((slurm.index, slurm.count), (5, 16));
    }

    #[test]
    fn a_slurm_array_is_a_part_of_its_own_or_times_the_tasks_of_each_job() {
        let array = |id: &'static str| {
            vec![
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_COUNT", "8"),
                ("SLURM_ARRAY_TASK_MIN", "0"),
            ]
        };
        assert_eq!(
            part(&array("3")).unwrap(),
            Some(ExtractionPart {
                index: 3,
                count: 8,
                source: "Slurm array task 3 of 8".into()
            })
        );
        // The batch step of an array job: Slurm's one process, the array's part.
        let batch = [array("3").as_slice(), &[("SLURM_PROCID", "0")]].concat();
        assert_eq!(
            part(&batch).unwrap().unwrap().source,
            "Slurm array task 3 of 8"
        );
        // Two tasks per array job: job a, task r → a·2 + r of 16.
        let tasks = [
            array("3").as_slice(),
            &[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")],
        ]
        .concat();
        assert_eq!(
            part(&tasks).unwrap(),
            Some(ExtractionPart {
                index: 7,
                count: 16,
                source: "Slurm array task 3 of 8 × SLURM_PROCID 1 of 2".into()
            })
        );
        // torchrun inside an array job.
        let torchrun = [array("2").as_slice(), &TORCHRUN[..3]].concat();
        let p = part(&torchrun).unwrap().unwrap();
        assert_eq!((p.index, p.count), (2 * 8 + 3, 64));
        assert_eq!(p.source, "Slurm array task 2 of 8 × RANK 3 of 8");
    }

    #[test]
    fn array_indices_start_at_min_and_advance_by_step() {
        let stepped =
            |id: &'static str, min: &'static str, step: &'static str, count: &'static str| {
                part(&[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", min),
                    ("SLURM_ARRAY_TASK_STEP", step),
                    ("SLURM_ARRAY_TASK_COUNT", count),
                ])
            };
        // --array=5-6
        let p = stepped("6", "5", "1", "2").unwrap().unwrap();
        assert_eq!((p.index, p.count), (1, 2));
        assert_eq!(p.source, "Slurm array task 1 of 2 (SLURM_ARRAY_TASK_ID=6)");
        // --array=10-40:10
        let p = stepped("30", "10", "10", "4").unwrap().unwrap();
        assert_eq!((p.index, p.count), (2, 4));
        // Off the step, below the minimum, past the count, a step of 0: not a dense range.
        for (id, min, step, count) in [
            ("25", "10", "10", "4"),
            ("4", "5", "1", "2"),
            ("7", "5", "1", "2"),
            ("5", "5", "0", "2"),
        ] {
            let e = error(stepped(id, min, step, count));
            assert!(
                e.contains(&format!("SLURM_ARRAY_TASK_ID={id}"))
                    && e.contains(&format!("SLURM_ARRAY_TASK_MIN={min}"))
                    && e.contains("--array=0-7"),
                "{e}"
            );
        }
        // Slurm sets the count and minimum with the id.
        assert_eq!(
            error(part(&[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_MIN", "0")
            ])),
            "SLURM_ARRAY_TASK_ID=1 is set but SLURM_ARRAY_TASK_COUNT is not; a launcher sets both"
        );
        let huge = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "18446744073709551615"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ];
        assert!(error(part(&huge)).contains("64 bits"));
    }

    #[test]
    fn first_host_expands_the_first_entry_of_a_node_list() {
        for (list, host) in [
            ("node[01-04,07],gpu3", Some("node01")),
            ("a,b", Some("a")),
            ("x-[9-12]", Some("x-9")),
            ("solo", Some("solo")),
            (" n[3,5] ", Some("n3")),
            ("rack[1-2]-n[3-4]", Some("rack1-n3")),
            ("n[07-08]-ib,m1", Some("n07-ib")),
            ("", None),
            ("n[1-2", None),
            ("n[]", None),
            ("n]1", None),
        ] {
            assert_eq!(first_host(list).as_deref(), host, "{list}");
        }
    }

    #[test]
    fn the_local_gpu_is_the_only_visible_one_else_the_local_rank() {
        let gpu = |pairs: &[(&str, &str)]| local_gpu(&vars(pairs));
        assert_eq!(gpu(&[]), 0);
        assert_eq!(gpu(&[("LOCAL_RANK", "3")]), 3);
        assert_eq!(gpu(&[("OMPI_COMM_WORLD_LOCAL_RANK", "2")]), 2);
        assert_eq!(gpu(&[("SLURM_LOCALID", "5")]), 5);
        assert_eq!(gpu(&[("LOCAL_RANK", "1"), ("SLURM_LOCALID", "5")]), 1);
        // --gpus-per-task=1: the task sees only its own GPU, whatever its local rank.
        assert_eq!(
            gpu(&[("CUDA_VISIBLE_DEVICES", "6"), ("SLURM_LOCALID", "5")]),
            0
        );
        assert_eq!(
            gpu(&[("CUDA_VISIBLE_DEVICES", "0,1"), ("LOCAL_RANK", "1")]),
            1
        );
        assert_eq!(gpu(&[("CUDA_VISIBLE_DEVICES", ""), ("LOCAL_RANK", "1")]), 1);
        assert_eq!(gpu(&[("LOCAL_RANK", "x")]), 0);
    }
}
