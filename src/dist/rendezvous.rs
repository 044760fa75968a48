//! The torchrun-style start of a data-parallel job: every process is told the world's size,
//! its rank, its rank on its machine and where rank 0 listens (`WORLD_SIZE`, `RANK`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, as `torchrun` and `simclr launch` set them).
//! The ranks meet at rank 0 over TCP, only to hand out NCCL's id (NCCL then makes its own
//! connections) and to keep a link from every rank to rank 0 for the job's life: a rank that
//! ends without saying it finished closes its link, and the others stop with one line naming
//! it, instead of waiting forever in a collective.
//!
//! The messages: a rank sends `MAGIC`, its rank and the world's size (u32, little-endian) and
//! its job's token (u64: the hash of `SIMCLR_JOB`, which `simclr launch` sets, so that a stray
//! rank of an earlier job on the same port is turned away); rank 0 answers every rank at once,
//! once all have come: `OK` and the payload (NCCL's id), or `REFUSED` and why. Later, a rank
//! that finishes sends `DONE` on its link, which the other end watches (with TCP keepalive, so
//! that a machine that vanishes is noticed too).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"simclr\x00\x01";
const OK: u8 = 0;
const REFUSED: u8 = 1;
const DONE: u8 = 2;

/// How long rank 0 waits for a connection's hello before dropping it (a health check, a stray).
const HELLO_S: u64 = 5;
/// How much longer than its own deadline a rank waits for rank 0's answer (ranks start at
/// different times; rank 0 answers by its own deadline).
const ANSWER_MARGIN_S: u64 = 60;

/// How long the ranks wait for each other to arrive, when `SIMCLR_RENDEZVOUS_TIMEOUT`
/// (seconds) does not say (torchrun waits 900 s; a job whose ranks start together needs less).
const DEFAULT_TIMEOUT_S: u64 = 300;

/// This process's place in a torchrun-style launch.
#[derive(Clone, Debug)]
pub struct Torchrun {
    pub rank: usize,
    pub world: usize,
    /// Which GPU of its machine the rank takes.
    pub local_rank: usize,
    /// Where rank 0 listens, `MASTER_ADDR:MASTER_PORT` (an IPv6 address in brackets).
    pub master: String,
    /// The job's token (`SIMCLR_JOB` hashed; 0 without one).
    pub job: u64,
}

impl Torchrun {
    /// The launch's settings, when `WORLD_SIZE` says there is one.
    pub fn from_env() -> Result<Option<Torchrun>, String> {
        let Ok(world) = std::env::var("WORLD_SIZE") else {
            return Ok(None);
        };
        let get = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!(
                    "WORLD_SIZE={world} is set but {name} is not: a torchrun-style launch sets \
                     WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (simclr launch does)"
                )
            })
        };
        let number = |name: &str, text: String| {
            text.parse::<usize>()
                .map_err(|_| format!("{name}={text}: expected a number"))
        };
        let addr = get("MASTER_ADDR")?;
        let addr = match addr.contains(':') && !addr.starts_with('[') {
            true => format!("[{addr}]"),
            false => addr,
        };
        let t = Torchrun {
            world: number("WORLD_SIZE", world.clone())?,
            rank: number("RANK", get("RANK")?)?,
            local_rank: number("LOCAL_RANK", get("LOCAL_RANK")?)?,
            master: format!("{addr}:{}", number("MASTER_PORT", get("MASTER_PORT")?)?),
            job: std::env::var("SIMCLR_JOB").map_or(0, |j| super::hash64(&j)),
        };
        if t.world == 0 || t.rank >= t.world {
            return Err(format!(
                "RANK={} with WORLD_SIZE={}: ranks run from 0 to WORLD_SIZE - 1",
                t.rank, t.world
            ));
        }
        Ok(Some(t))
    }
}

/// How long the ranks wait for each other: `SIMCLR_RENDEZVOUS_TIMEOUT` seconds, or 300.
pub fn timeout() -> Result<Duration, String> {
    match std::env::var("SIMCLR_RENDEZVOUS_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("SIMCLR_RENDEZVOUS_TIMEOUT={text}: expected seconds > 0")),
    }
}

/// The links between rank 0 and the others after the rendezvous: rank 0 holds one per
/// other rank, the others one to rank 0.
pub struct Links {
    /// (the rank at the other end, the link).
    peers: Vec<(usize, TcpStream)>,
}

/// Brings the `t.world` ranks together at `t.master` within `timeout`: rank 0 listens there
/// and, once every rank has come, sends them what `payload` makes (NCCL's id); the others
/// connect and receive it. Returns the payload and the links, or one line saying which ranks
/// did not come, or what was wrong with one.
pub fn join(
    t: &Torchrun,
    payload: impl FnOnce() -> Result<Vec<u8>, String>,
    timeout: Duration,
) -> Result<(Vec<u8>, Links), String> {
    let deadline = Instant::now() + timeout;
    match t.rank {
        0 => lead(t, payload, deadline, timeout),
        _ => follow(t, deadline, timeout),
    }
}

fn lead(
    t: &Torchrun,
    payload: impl FnOnce() -> Result<Vec<u8>, String>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Links), String> {
    let port = t.master.rsplit(':').next().unwrap_or_default();
    // IPv6 and IPv4 both (Linux maps IPv4 onto an IPv6 socket); IPv4 alone where IPv6 is off.
    let listener = TcpListener::bind(format!("[::]:{port}"))
        .or_else(|_| TcpListener::bind(format!("0.0.0.0:{port}")))
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| format!("rendezvous: rank 0 cannot listen on port {port}: {e}"))?;
    let mut peers: Vec<Option<TcpStream>> = (0..t.world).map(|_| None).collect();
    let mut refused = None;
    // Links of ranks refused, to tell them why.
    let mut strays = Vec::new();
    while refused.is_none() && peers[1..].iter().any(Option::is_none) {
        let mut link = match listener.accept() {
            Ok((link, _)) => link,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let missing: Vec<String> = (1..t.world)
                    .filter(|&r| peers[r].is_none())
                    .map(|r| r.to_string())
                    .collect();
                refused = Some(format!(
                    "rendezvous at {}: rank(s) {} of {} did not come within {:.0} s",
                    t.master,
                    missing.join(", "),
                    t.world,
                    timeout.as_secs_f64()
                ));
                break;
            }
            Err(e) => return Err(format!("rendezvous at {}: {e}", t.master)),
        };
        // A connection that is not a rank (a port scan) is dropped; a rank that disagrees
        // with this one about the job ends the rendezvous.
        let Some((rank, world, job)) = hello(&mut link, deadline) else {
            continue;
        };
        if job != t.job {
            continue; // a rank of another job
        }
        let why = if world != t.world {
            Some(format!(
                "rendezvous at {}: rank {rank} was started with WORLD_SIZE={world}, rank 0 with {}",
                t.master, t.world
            ))
        } else if rank == 0 || rank >= world || peers[rank].is_some() {
            Some(format!(
                "rendezvous at {}: two ranks say RANK={rank}",
                t.master
            ))
        } else {
            None
        };
        match why {
            None => peers[rank] = Some(link),
            Some(why) => {
                strays.push(link);
                refused = Some(why);
            }
        }
    }
    let peers: Vec<(usize, TcpStream)> = peers
        .into_iter()
        .enumerate()
        .filter_map(|(r, link)| Some((r, link?)))
        .collect();
    let answer = match refused {
        Some(why) => Err(why),
        None => payload(),
    };
    for link in peers.iter().map(|(_, link)| link).chain(&strays) {
        let reply = match &answer {
            Ok(bytes) => frame(OK, bytes),
            Err(why) => frame(REFUSED, why.as_bytes()),
        };
        // A rank that cannot be told finds out through its own timeout.
        let _ = (&*link).write_all(&reply);
    }
    Ok((answer?, Links { peers }))
}

fn follow(t: &Torchrun, deadline: Instant, timeout: Duration) -> Result<(Vec<u8>, Links), String> {
    let secs = timeout.as_secs_f64();
    let mut link = loop {
        // Every address the name resolves to (IPv6 and IPv4), the first that answers.
        let tried = t
            .master
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|addrs| {
                let mut last = "no address".to_string();
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(link) => return Ok(link),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            });
        match tried {
            Ok(link) => break link,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(format!(
                    "rendezvous: rank 0 at {} did not answer within {secs:.0} s ({e})",
                    t.master
                ))
            }
        }
    };
    let mut hello = MAGIC.to_vec();
    hello.extend((t.rank as u32).to_le_bytes());
    hello.extend((t.world as u32).to_le_bytes());
    hello.extend(t.job.to_le_bytes());
    link.write_all(&hello)
        .map_err(|e| format!("rendezvous: rank 0 at {}: {e}", t.master))?;
    let late = || {
        format!(
            "rendezvous at {}: not every rank came within {secs:.0} s (rank 0 names them)",
            t.master
        )
    };
    // Rank 0 answers by its own deadline, with the missing ranks' names: a little longer.
    let deadline = deadline + Duration::from_secs(ANSWER_MARGIN_S);
    let mut head = [0u8; 5];
    read_by(&mut link, &mut head, deadline).map_err(|_| late())?;
    let mut body = vec![0u8; u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize];
    read_by(&mut link, &mut body, deadline).map_err(|_| late())?;
    match head[0] {
        OK => Ok((
            body,
            Links {
                peers: vec![(0, link)],
            },
        )),
        _ => Err(String::from_utf8_lossy(&body).into_owned()),
    }
}

/// A rank's hello: (its rank, its world size, its job's token), or None for anything else,
/// or for silence past `HELLO_S` (nothing holds up the ranks queued behind it).
fn hello(link: &mut TcpStream, deadline: Instant) -> Option<(usize, usize, u64)> {
    link.set_nonblocking(false).ok()?;
    let mut bytes = [0u8; 24];
    let soon = deadline.min(Instant::now() + Duration::from_secs(HELLO_S));
    read_by(link, &mut bytes, soon).ok()?;
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let job = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    (&bytes[..8] == MAGIC).then(|| (word(8), word(12), job))
}

/// Fills `buf` from `link`, failing at `deadline`.
fn read_by(link: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    link.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    link.read_exact(buf)
}

fn frame(status: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![status];
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

impl Links {
    /// Watches every link from a thread of its own: when one closes before its rank said
    /// `DONE`, `lost(that rank)` runs (the trainer's ends the process: `super::stop_when_lost`).
    pub fn watch(&self, lost: impl Fn(usize) + Send + Sync + Clone + 'static) {
        for (rank, link) in &self.peers {
            let (rank, lost) = (*rank, lost.clone());
            let Ok(mut link) = link.try_clone() else {
                lost(rank);
                continue;
            };
            keepalive(&link);
            std::thread::spawn(move || {
                let _ = link.set_read_timeout(None);
                let mut byte = [0u8];
                match link.read_exact(&mut byte) {
                    Ok(()) if byte[0] == DONE => {}
                    _ => lost(rank),
                }
            });
        }
    }

    /// Says on every link that this rank finished its work: its exit is no failure.
    pub fn finish(&self) {
        for (_, link) in &self.peers {
            let _ = (&*link).write_all(&[DONE]);
        }
    }

    /// Watches the links for the rest of the process (`watch`, with `lost`), for `finished`.
    pub fn keep(self, lost: impl Fn(usize) + Send + Sync + Clone + 'static) {
        self.watch(lost);
        *KEPT.lock().unwrap() = Some(self);
    }
}

/// TCP keepalive on a link: a peer whose machine vanishes (no FIN) is found dead within about
/// a minute (30 s idle, then 3 probes 10 s apart), as one whose process ends is at once.
fn keepalive(link: &TcpStream) {
    use std::os::fd::AsRawFd;
    let set = |level: i32, name: i32, value: i32| {
        // SAFETY: a live socket; an int option.
        unsafe {
            libc::setsockopt(
                link.as_raw_fd(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

/// The links of this process's rendezvous, kept for the job's life.
static KEPT: std::sync::Mutex<Option<Links>> = std::sync::Mutex::new(None);

/// Tells the other ranks this one finished without error (no-op without a rendezvous): the
/// trainer's last act on success. A rank that exits without it is a failed rank.
pub fn finished() {
    if let Some(links) = KEPT.lock().unwrap().as_ref() {
        links.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A port nothing listens on now (the tests' ranks meet there).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn rank(rank: usize, world: usize, port: u16) -> Torchrun {
        Torchrun {
            rank,
            world,
            local_rank: rank,
            master: format!("127.0.0.1:{port}"),
            job: 7,
        }
    }

    /// Runs `join` on each of `ranks` (of a world of `world`) in threads.
    fn meet(ranks: &[usize], world: usize, secs: f64) -> Vec<Result<(Vec<u8>, Links), String>> {
        let port = free_port();
        let threads: Vec<_> = ranks
            .iter()
            .map(|&r| {
                let t = rank(r, world, port);
                std::thread::spawn(move || {
                    join(&t, || Ok(vec![7, 1, 2]), Duration::from_secs_f64(secs))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn every_rank_gets_rank_zeros_payload() {
        for result in meet(&[2, 0, 1], 3, 20.0) {
            assert_eq!(result.unwrap().0, vec![7, 1, 2]);
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_named_within_the_timeout() {
        let t0 = Instant::now();
        let results = meet(&[0, 1], 4, 1.0);
        let lead = results[0].as_ref().err().expect("rank 0 must fail");
        assert!(
            lead.contains("rank(s) 2, 3 of 4 did not come within 1 s"),
            "{lead}"
        );
        let other = results[1].as_ref().err().expect("rank 1 must fail");
        assert!(
            other.contains("rank(s) 2, 3 of 4"),
            "rank 0's reason reaches rank 1: {other}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_rank_zero_ends_the_others_within_the_timeout() {
        let results = meet(&[1], 2, 0.5);
        let e = results[0].as_ref().err().expect("no rank 0: must fail");
        assert!(
            e.contains("rank 0 at 127.0.0.1:") && e.contains("did not answer"),
            "{e}"
        );
    }

    #[test]
    fn ranks_that_disagree_on_the_world_are_refused() {
        let port = free_port();
        let a = std::thread::spawn(move || {
            join(&rank(0, 2, port), || Ok(vec![]), Duration::from_secs(20))
        });
        let b = join(&rank(1, 3, port), || Ok(vec![]), Duration::from_secs(20));
        let e = a.join().unwrap().err().expect("rank 0 must refuse");
        assert!(
            e.contains("rank 1 was started with WORLD_SIZE=3, rank 0 with 2"),
            "{e}"
        );
        assert_eq!(b.err().as_deref(), Some(e.as_str()));
    }

    #[test]
    fn a_rank_that_ends_without_finishing_is_reported_and_one_that_finishes_is_not() {
        let mut results = meet(&[0, 1, 2], 3, 20.0).into_iter();
        let (_, lead) = results.next().unwrap().unwrap();
        let (_, one) = results.next().unwrap().unwrap();
        let (_, two) = results.next().unwrap().unwrap();
        let (tx, rx) = mpsc::channel();
        lead.watch(move |r| tx.send(r).unwrap());
        one.finish();
        drop(two); // rank 2 dies: its link closes without DONE
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(2));
        drop(one);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "rank 1 finished"
        );
    }

    #[test]
    fn a_silent_connection_or_a_rank_of_another_job_does_not_hold_up_the_rendezvous() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = move |rank, job| Torchrun {
            rank,
            world: 2,
            local_rank: rank,
            master: format!("127.0.0.1:{port}"),
            job,
        };
        let lead =
            std::thread::spawn(move || join(&t(0, 1), || Ok(vec![9]), Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(200));
        // A silent connection, then a stray of another job, then the real rank 1.
        let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let stray =
            std::thread::spawn(move || join(&t(1, 2), || Ok(vec![]), Duration::from_secs(2)));
        let t0 = Instant::now();
        let (got, _) = join(&t(1, 1), || Ok(vec![]), Duration::from_secs(30)).unwrap();
        assert_eq!(got, vec![9]);
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(lead.join().unwrap().unwrap().0, vec![9]);
        drop(stray); // it times out on its own: rank 0 never answers another job
    }
}
