//! The one place that touches signal dispositions.
//!
//! While a child runs, lease watches the signals a user or a supervisor uses to stop a job
//! (INT, TERM, HUP, QUIT, USR1, USR2) and SIGCHLD. A signal that another process sent to lease's
//! pid is forwarded to the child once. A signal the terminal delivered to the whole foreground
//! process group (Ctrl-C, Ctrl-\) already reached the child, so it is not sent again, unless
//! the child has left lease's process group (e.g. called `setsid`), in which case the terminal's
//! signal never reached it and lease passes it on. Signals that were ignored when lease started
//! (`nohup`) are left alone, so the child inherits them ignored. With `--on-expiry`, SIGALRM is
//! the expiry timer (`setitimer(ITIMER_REAL)`, to the microsecond).
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::process::ExitStatus;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::libc::{self, c_int};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::{Pid, getpgid, getpgrp};
use signal_hook::consts::signal::{
    SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGPIPE, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Origin};

/// The signals lease forwards to its child.
pub const FORWARDED: [c_int; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Whether SIGPIPE was ignored when the process started. The Rust runtime sets SIGPIPE to
/// ignored before `main`, so the original disposition is read earlier, from `.init_array`.
static SIGPIPE_IGNORED_AT_START: AtomicBool = AtomicBool::new(false);

extern "C" fn record_sigpipe_at_start() {
    SIGPIPE_IGNORED_AT_START.store(is_ignored(SIGPIPE), Ordering::Relaxed);
}

// SAFETY: the function only queries a signal disposition and stores a flag; it touches no Rust
// runtime state, so it is sound to run before `main`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_SIGPIPE_AT_START: extern "C" fn() = record_sigpipe_at_start;

/// What the child's signal dispositions must be made before it runs the command.
#[derive(Debug, Clone, Default)]
pub struct SignalPlan {
    /// Signals lease caught (with handlers that must not run in the child): back to default.
    pub reset: Vec<c_int>,
    /// Signals that were ignored when lease started: ignored again in the child.
    pub ignore: Vec<c_int>,
}

/// Watches signals for the lifetime of one child and forwards them to it.
#[derive(Debug)]
pub struct Forwarder {
    signals: SignalsInfo<WithOrigin>,
    watched: Vec<c_int>,
    ignore_in_child: Vec<c_int>,
    /// Set once the child has exited: a SIGINT or SIGTERM then ends lease at once.
    finishing: Arc<AtomicBool>,
}

impl Forwarder {
    /// Starts watching. Call before minting, so no signal between minting and the child's
    /// start is lost. With `watch_expiry`, SIGALRM is watched too: it is the expiry timer.
    pub fn install(watch_expiry: bool) -> io::Result<Forwarder> {
        let mut watched: Vec<c_int> = FORWARDED.into_iter().filter(|&s| !is_ignored(s)).collect();
        // SIGCHLD (and SIGALRM, when it serves as the expiry timer) must be caught by lease; if
        // they were ignored, the child gets them back ignored.
        let mut ignore_in_child = Vec::new();
        let caught = if watch_expiry {
            &[SIGCHLD, SIGALRM][..]
        } else {
            &[SIGCHLD][..]
        };
        for &signal in caught {
            if is_ignored(signal) {
                ignore_in_child.push(signal);
            }
            watched.push(signal);
        }
        if SIGPIPE_IGNORED_AT_START.load(Ordering::Relaxed) {
            ignore_in_child.push(SIGPIPE);
        }
        // The watched signals are blocked while their handlers go in, and come (once) after:
        // signal-hook's registry installs a signal's handler a moment before the action that
        // keeps it, and a signal in between was dropped (the command then started and ran on
        // as if nothing had been sent: about one run in a hundred, signalled in its first
        // milliseconds).
        let mut blocked = SigSet::empty();
        for &signal in &watched {
            if let Ok(signal) = Signal::try_from(signal) {
                blocked.add(signal);
            }
        }
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut before))?;
        #[cfg(debug_assertions)]
        debug_raise("LEASE_DEBUG_SIGNAL_DURING_INSTALL");
        let finishing = Arc::new(AtomicBool::new(false));
        let installed = register(&watched, &finishing);
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None)?;
        let signals = installed?;
        Ok(Forwarder {
            signals,
            watched,
            ignore_in_child,
            finishing,
        })
    }

    /// What the child's signal state must be made before it runs the command: lease's
    /// handlers (and the runtime's SIGPIPE) back to default, and what was ignored when lease
    /// started ignored again.
    pub fn child_signals(&self) -> SignalPlan {
        let mut reset = self.watched.clone();
        reset.push(SIGPIPE);
        SignalPlan {
            reset,
            ignore: self.ignore_in_child.clone(),
        }
    }

    /// The child has exited and lease is cleaning up: from now on a SIGINT or SIGTERM (a user
    /// or a supervisor losing patience) ends lease at once, with 128 + the signal. The token
    /// is dead already: `verify` denies it once its command is gone.
    pub fn finishing(&self) {
        self.finishing.store(true, Ordering::SeqCst);
    }

    /// Leaves the handlers in place until lease exits, which it does soon after its child:
    /// until then a SIGINT or SIGTERM still ends it at once ([`Forwarder::finishing`]) and
    /// other watched signals are caught and dropped. Taking them out one by one (each a new
    /// copy of signal-hook's registry) cost a run 42,000 instructions for nothing.
    pub fn leave_installed(self) {
        std::mem::forget(self);
    }

    /// A stopping signal that arrived before the child started, if any. lease then cleans up
    /// and dies of it instead of starting the child.
    pub fn arrived_before_start(&mut self) -> Option<c_int> {
        self.signals
            .pending()
            .map(|origin| origin.signal)
            .find(|signal| FORWARDED.contains(signal))
    }

    /// Waits for `child` to exit, forwarding signals to it meanwhile. Returns as soon as the
    /// child itself exits, whatever its own children still do. With a `deadline`, the child is
    /// ended when the lease expires (SIGTERM, then SIGKILL after the grace; or SIGKILL).
    pub fn wait(&mut self, pid: Pid, mut deadline: Option<Deadline<'_>>) -> io::Result<Waited> {
        let mut stage = Stage::Running;
        if let Some(deadline) = deadline.as_mut() {
            stage = deadline.on_alarm(stage, pid);
        }
        loop {
            if let Some(status) = try_wait(pid)? {
                if deadline.is_some() {
                    cancel_alarm();
                }
                return Ok(Waited {
                    status,
                    ended_at_expiry: stage != Stage::Running,
                    sent_at_expiry: stage.sent(),
                });
            }
            // Blocks until at least one signal arrives; SIGCHLD wakes it when the child exits.
            for origin in self.signals.wait() {
                match (origin.signal, deadline.as_mut()) {
                    (SIGCHLD, _) => {}
                    (SIGALRM, Some(deadline)) => stage = deadline.on_alarm(stage, pid),
                    _ => forward(&origin, pid),
                }
            }
        }
    }
}

/// The iterator over `watched`, and the conditional shutdowns of SIGINT and SIGTERM (see
/// [`Forwarder::finishing`]).
fn register(watched: &[c_int], finishing: &Arc<AtomicBool>) -> io::Result<SignalsInfo<WithOrigin>> {
    let signals = SignalsInfo::<WithOrigin>::new(watched)?;
    for signal in [SIGINT, SIGTERM] {
        if watched.contains(&signal) {
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                Arc::clone(finishing),
            )?;
        }
    }
    Ok(signals)
}

/// The child's exit status if it has exited (reaping it), or `None` while it runs. The raw
/// wait status is kept as it is: a death by any signal, real-time ones included, is reported.
fn try_wait(pid: Pid) -> io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable int for the kernel to fill.
        return match unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            // A command that made lease its tracer reports its stops too: they are not an end.
            reaped if reaped == pid.as_raw() => Ok((libc::WIFEXITED(status)
                || libc::WIFSIGNALED(status))
            .then(|| ExitStatus::from_raw(status))),
            _ => match io::Error::last_os_error() {
                err if err.kind() == io::ErrorKind::Interrupted => continue,
                err => Err(err),
            },
        };
    }
}

/// How a child waited for by [`Forwarder::wait`] ended.
#[derive(Debug)]
pub struct Waited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether lease ended it because the lease expired.
    pub ended_at_expiry: bool,
    /// The last signal lease sent it because the lease expired (SIGTERM, or SIGKILL after the
    /// grace or with `--on-expiry kill`), if any.
    pub sent_at_expiry: Option<c_int>,
}

/// Ending the child when its lease expires, timed with `setitimer(ITIMER_REAL)`: SIGALRM
/// arrives through the same iterator as every other signal, so no thread and no polling are
/// needed. The timer has microsecond precision, so the child is signalled within a few
/// milliseconds of the moment `verify` starts denying its token (`now >= expires_at`).
pub struct Deadline<'a> {
    /// SIGKILL at once (`--on-expiry kill`) rather than SIGTERM first (`term`).
    pub kill_at_once: bool,
    /// The time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The lease's expiry, read afresh each time (a renew may have moved it).
    pub expires_at: &'a mut dyn FnMut() -> SystemTime,
}

impl std::fmt::Debug for Deadline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("kill_at_once", &self.kill_at_once)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Where the child stands with respect to its lease's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Running,
    Terminated,
    Killed,
}

impl Stage {
    /// The signal lease sent last at this stage.
    fn sent(self) -> Option<c_int> {
        match self {
            Stage::Running => None,
            Stage::Terminated => Some(SIGTERM),
            Stage::Killed => Some(signal_hook::consts::signal::SIGKILL),
        }
    }
}

impl Deadline<'_> {
    /// Acts on the timer (or on the first call): ends the child if the lease has expired,
    /// otherwise sets the timer for the expiry.
    fn on_alarm(&mut self, stage: Stage, child: Pid) -> Stage {
        match stage {
            Stage::Running => {
                let now = SystemTime::now();
                match (self.expires_at)().duration_since(now) {
                    Ok(left) if !left.is_zero() => {
                        set_alarm(left);
                        Stage::Running
                    }
                    _ if self.kill_at_once => {
                        let _ = kill(child, Signal::SIGKILL);
                        Stage::Killed
                    }
                    _ => {
                        let _ = kill(child, Signal::SIGTERM);
                        set_alarm(self.grace);
                        Stage::Terminated
                    }
                }
            }
            Stage::Terminated => {
                let _ = kill(child, Signal::SIGKILL);
                Stage::Killed
            }
            Stage::Killed => Stage::Killed,
        }
    }
}

/// Sets the expiry timer to deliver SIGALRM `after` from now, rounded up to the microsecond
/// (never zero, which would disarm it; a timer that fires early is simply set again).
fn set_alarm(after: Duration) {
    set_timer(timeval(after.max(Duration::from_micros(1))));
}

/// Disarms the expiry timer.
fn cancel_alarm() {
    set_timer(libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    });
}

fn set_timer(value: libc::timeval) {
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    // SAFETY: `timer` is a valid itimerval; a null old-value pointer is allowed. setitimer only
    // arms the process's real-time timer, whose SIGALRM lease catches while the timer is set.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, ptr::null_mut()) };
}

/// `after` as a `timeval`, rounded up to the microsecond and capped at about 68 years.
fn timeval(after: Duration) -> libc::timeval {
    const MAX_SECONDS: u128 = i32::MAX as u128;
    let micros = after.as_nanos().div_ceil(1000);
    let (seconds, micros) = match micros / 1_000_000 {
        seconds if seconds >= MAX_SECONDS => (MAX_SECONDS, 0),
        seconds => (seconds, micros % 1_000_000),
    };
    libc::timeval {
        tv_sec: libc::time_t::try_from(seconds).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::try_from(micros).unwrap_or(0),
    }
}

/// Sends `origin.signal` on to the child unless the child already got it from the terminal.
/// The child has not been reaped yet, so its pid cannot have been reused.
fn forward(origin: &Origin, child: Pid) {
    let from_terminal = matches!(origin.cause, Cause::Kernel);
    if from_terminal && getpgid(Some(child)).is_ok_and(|group| group == getpgrp()) {
        return;
    }
    if let Ok(signal) = Signal::try_from(origin.signal) {
        // The child may have exited a moment ago; its SIGCHLD ends the wait.
        let _ = kill(child, signal);
    }
}

/// Debug builds only (`LEASE_DEBUG_SIGNAL_BEFORE_START=N`): lease sends itself signal N once
/// the command is started and held, before it may start: the window in which a stopping signal
/// must stop the start, which a signal sent from outside rarely hits.
#[cfg(debug_assertions)]
pub fn debug_signal_before_start() {
    debug_raise("LEASE_DEBUG_SIGNAL_BEFORE_START");
}

/// Debug builds only: lease sends itself the signal whose number `variable` holds, if set, to
/// hit a window of a few microseconds at will (`LEASE_DEBUG_SIGNAL_DURING_INSTALL`: while
/// lease's handlers go in, before any is in place).
#[cfg(debug_assertions)]
pub fn debug_raise(variable: &str) {
    let signal = std::env::var(variable).ok();
    if let Some(signal) = signal.and_then(|n| n.parse::<c_int>().ok()) {
        // To the process, as `kill` from outside sends it: any thread that does not block it
        // may take it, which is what the blocking must account for.
        if let Ok(signal) = Signal::try_from(signal) {
            let _ = kill(nix::unistd::getpid(), signal);
        }
    }
}

/// Whether a SIGTERM or SIGINT sent to this process waits, blocked, to be taken. The broker
/// blocks them while it starts (`broker::serve`); what it waits for meanwhile (a
/// `secret_command`) asks this, to stop at once rather than at its own deadline.
pub fn stop_pending() -> bool {
    let mut pending = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigpending writes the set of pending signals into the valid, writable set given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: sigpending returned 0, so it filled `pending` (zeroed to begin with anyway).
    let pending = unsafe { pending.assume_init() };
    // SAFETY: sigismember reads the initialised set; both numbers are valid signals.
    [SIGTERM, SIGINT]
        .into_iter()
        .any(|signal| unsafe { libc::sigismember(&pending, signal) } == 1)
}

/// Whether `signal` is currently ignored.
fn is_ignored(signal: c_int) -> bool {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action makes sigaction only report the current disposition into
    // `old`, which is a valid, writable sigaction.
    let rc = unsafe { libc::sigaction(signal, ptr::null(), old.as_mut_ptr()) };
    // SAFETY: sigaction returned 0, so it filled `old` (and it was zeroed to begin with).
    rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Ignores SIGPIPE in lease itself, as the Rust runtime does before a Rust `main`: a write to a
/// closed pipe then fails with `BrokenPipe` instead of killing lease. What it was at start is
/// recorded before (`.init_array`) and given back to the command.
pub fn ignore_sigpipe() {
    // SAFETY: an all-zero sigaction is valid: empty mask, no flags, SIG_DFL.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_IGN;
    // SAFETY: SIG_IGN installs no handler, so no code of ours runs on a signal; `sigaction`
    // with a valid action is sound at any time. Called once, before lease starts a thread.
    unsafe { libc::sigaction(SIGPIPE, &action, ptr::null_mut()) };
}

/// Dies of `signal`, the way the child did: core dumps off (the child already dumped, if it
/// was going to), default disposition restored, the signal unblocked and raised. Returns only
/// for a signal whose default action does not end a process (ignored or stopping, which
/// cannot have killed the child; the caller then exits with 128 + N).
pub fn die_of(signal: c_int) {
    use libc::{SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH};
    if matches!(
        signal,
        SIGCHLD | SIGCONT | SIGURG | SIGWINCH | SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU
    ) {
        return;
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring a default disposition and unblocking a signal are sound at any time;
    // lease is ending, so nothing relies on its handler any more. An all-zero sigaction is
    // SIG_DFL with an empty mask and no flags.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, &default, ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_a_process_that_is_not_a_child_is_an_error() {
        let err = try_wait(nix::unistd::getpid()).expect_err("lease is not its own child");
        assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    fn a_deadline_shows_its_settings_but_not_its_clock() {
        let mut expires_at = || SystemTime::UNIX_EPOCH;
        let deadline = Deadline {
            kill_at_once: true,
            grace: Duration::from_secs(2),
            expires_at: &mut expires_at,
        };
        assert_eq!(
            format!("{deadline:?}"),
            "Deadline { kill_at_once: true, grace: 2s, .. }"
        );
    }

    #[test]
    fn timer_values_round_up_to_the_microsecond_and_are_capped() {
        let tv = |d: Duration| {
            let t = timeval(d);
            (t.tv_sec, t.tv_usec)
        };
        assert_eq!(tv(Duration::from_nanos(1)), (0, 1));
        assert_eq!(tv(Duration::from_millis(2_300)), (2, 300_000));
        assert_eq!(tv(Duration::from_nanos(1_999_999_999)), (2, 0));
        assert_eq!(tv(Duration::MAX), (i64::from(i32::MAX), 0));
        assert_eq!(
            tv(Duration::from_secs(u64::from(i32::MAX.unsigned_abs())) + Duration::from_micros(7)),
            (i64::from(i32::MAX), 0)
        );
    }
}
