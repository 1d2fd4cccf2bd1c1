//! Child processes that cannot outlive the harness.
//!
//! Every child is started in its own process group (so a terminal's Ctrl-C does not hit it
//! half-way and so the whole group can be signalled), with stdout and stderr appended to a log
//! file, and is killed (the whole group) on drop. As a last resort, each child also gets
//! `PR_SET_PDEATHSIG = SIGKILL`: if the harness process dies without unwinding (SIGKILL, a
//! panic while panicking, a static never dropped), the kernel kills the child. PDEATHSIG fires
//! when the *thread* that forked exits, so all children are forked by one spawner thread that
//! lives as long as the process.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Process groups of the children alive now, for [`kill_all_children`].
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forks `cmd` from the spawner thread (see the module doc).
fn spawn_from_spawner(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let started = thread::Builder::new()
            .name("keygate-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            eprintln!("keygate-harness: cannot start the spawner thread: {e}");
        }
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// Sends `sig` to every child process group still alive (for signal handlers' helper threads).
pub fn signal_all_children(sig: i32) {
    for pgid in live().iter() {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(*pgid, sig);
        }
    }
}

/// SIGTERM to every child group alive, up to `grace` for them to go, then SIGKILL to the rest.
/// For a Ctrl-C handler: the `Drop`s of the owners will not run after `std::process::exit`.
pub fn kill_all_children(grace: Duration) {
    signal_all_children(libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let any_alive = live().iter().any(|pgid| {
            // SAFETY: killpg with signal 0 only checks for existence.
            unsafe { libc::killpg(*pgid, 0) == 0 }
        });
        if !any_alive {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    signal_all_children(libc::SIGKILL);
}

/// A child process in its own process group, logging to a file, killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pgid: i32,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::msg(format!("{name}: opening log {}: {e}", log.display())))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before prctl: PDEATHSIG would never fire.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = spawn_from_spawner(cmd)
            .map_err(|e| Error::msg(format!("{name}: cannot start {program}: {e}")))?;
        let pgid = child.id() as i32;
        live().insert(pgid);
        Ok(Proc {
            name: name.to_string(),
            child,
            pgid,
            status: None,
            log: log.to_path_buf(),
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if it has exited (reaps it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped(st);
            }
        }
        self.status
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends `sig` to its whole process group, unless it was already reaped (its pgid could
    /// then belong to someone else).
    pub fn signal(&mut self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: killpg has no memory-safety preconditions; the group is ours while the
            // leader is not reaped.
            unsafe {
                libc::killpg(self.pgid, sig);
            }
        }
    }

    /// SIGTERM to the group, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exited().is_some() {
            return self.status;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return self.status;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    /// SIGKILL to the group, then reaps. Returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.exited().is_some() {
            return self.status;
        }
        self.signal(libc::SIGKILL);
        if let Ok(st) = self.child.wait() {
            self.reaped(st);
        }
        self.status
    }

    fn reaped(&mut self, st: ExitStatus) {
        self.status = Some(st);
        live().remove(&self.pgid);
    }

    /// The child's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The whole text of a log file (lossy UTF-8; empty if unreadable).
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// The text of a log file from byte `from` on (lossy UTF-8; empty if unreadable).
pub fn read_log_from(path: &Path, from: u64) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines.get(start..).unwrap_or_default().join("\n")
}

/// Size of a file now (0 if missing): the offset from which a restarted child's output starts.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until a line of `log` after byte `from` satisfies `find` (returns what it returns),
/// the process exits, or `timeout` passes.
pub fn wait_for_log_line<T>(
    proc: &mut Proc,
    from: u64,
    timeout: Duration,
    find: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let fresh = read_log_from(proc.log_path(), from);
        let fresh = fresh.as_str();
        // Only complete lines: a half-written ready line must not be parsed.
        if let Some(end) = fresh.rfind('\n') {
            for line in fresh.get(..end).unwrap_or("").lines() {
                if let Some(found) = find(line) {
                    return Ok(found);
                }
            }
        }
        if let Some(st) = proc.exited() {
            return Err(Error::msg(format!(
                "{} exited ({st}) before it was ready; log tail:\n{}",
                proc.name(),
                tail(fresh, 40)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::msg(format!(
                "{} not ready after {:?}; log tail:\n{}",
                proc.name(),
                timeout,
                tail(fresh, 40)
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}
