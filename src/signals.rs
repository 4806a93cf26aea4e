//! The one place that touches signal dispositions.
//!
//! While a child runs, lease watches the signals a user or a supervisor uses to stop or tell a
//! job (INT, TERM, HUP, QUIT, USR1, USR2; and ALRM, VTALRM, PROF, IO, PWR, STKFLT and the
//! real-time ones, whose default action would end lease without its revocation) and SIGCHLD. A
//! signal that another process sent to lease's pid is forwarded to the child once. A signal the terminal delivered to the whole foreground
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::libc::{self, c_int};
use nix::libc::{
    SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGPIPE, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getpgid, getpgrp};

/// The signals that stop a job: one that comes before the command starts stops the start, and
/// lease dies of it ([`Forwarder::arrived_before_start`]). Forwarded once the command runs.
pub const STOPPING: [c_int; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// The other signals whose default action ends a process and which are sent rather than caused
/// by what the process does: a supervisor's or a user's (`timeout -s ALRM`, systemd's
/// SIGRTMIN+3). Not caught, they would end lease without its revocation and leave the command
/// running: lease forwards them, as the command would get them bare. One that comes before the
/// command starts is forwarded to it once it runs. Left to their default: the job-control
/// signals (the terminal and the shell handle them), SIGWINCH and SIGURG (ignored by default),
/// and the ones the kernel sends a process for what it did itself (SIGSEGV, SIGBUS, SIGFPE,
/// SIGILL, SIGTRAP, SIGSYS, SIGABRT, SIGXCPU, SIGXFSZ), which are lease's own.
#[cfg(target_os = "linux")]
const ALSO_FORWARDED: [c_int; 6] = [
    SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
];
#[cfg(not(target_os = "linux"))]
const ALSO_FORWARDED: [c_int; 4] = [SIGALRM, libc::SIGVTALRM, libc::SIGPROF, libc::SIGIO];

/// Every signal lease forwards to its command.
fn forwarded() -> impl Iterator<Item = c_int> {
    #[cfg(target_os = "linux")]
    let real_time = libc::SIGRTMIN()..=libc::SIGRTMAX();
    #[cfg(not(target_os = "linux"))]
    let real_time = std::iter::empty();
    STOPPING.into_iter().chain(ALSO_FORWARDED).chain(real_time)
}

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
    /// Signals whose disposition lease changed for itself (SIGPIPE, ignored): back to default.
    pub reset: Vec<c_int>,
    /// Signals that were ignored when lease started: ignored again in the child.
    pub ignore: Vec<c_int>,
    /// The signal the child gets if lease dies (`PR_SET_PDEATHSIG`): SIGTERM, which a command
    /// can clean up on, unless lease started with it ignored (the child would ignore it too).
    pub death: c_int,
}

/// Watches signals for the lifetime of one child and forwards them to it.
///
/// No handler is installed: the watched signals are blocked, so that each one sent waits,
/// pending, until [`Forwarder::wait`] takes it with its origin (`sigwaitinfo`). A blocked
/// signal cannot be lost, cannot run in the child between its start and its exec (the child
/// unblocks them there, at their default action, as the command would have them), and costs
/// one system call for all of them, however many.
#[derive(Debug)]
pub struct Forwarder {
    watched: Vec<c_int>,
    ignore_in_child: Vec<c_int>,
}

impl Forwarder {
    /// Starts watching. Call before minting, so no signal between minting and the child's
    /// start is lost, and before lease starts a thread (a thread started before would not
    /// block them, and one sent there would take its default action: lease's end). With
    /// `watch_expiry`, SIGALRM is the expiry timer too.
    pub fn install(watch_expiry: bool) -> io::Result<Forwarder> {
        #[cfg(all(debug_assertions, target_os = "linux"))]
        assert_eq!(
            std::fs::read_dir("/proc/self/task")
                .map(Iterator::count)
                .ok(),
            Some(1),
            "signals are watched before lease starts a thread"
        );
        let mut watched: Vec<c_int> = forwarded().filter(|&s| !is_ignored(s)).collect();
        // SIGCHLD (and SIGALRM, when it serves as the expiry timer) must come to lease: if they
        // were ignored (an ignored SIGCHLD also reaps the child by itself), they are put back to
        // default while lease waits, and the child gets them back ignored.
        let mut ignore_in_child = Vec::new();
        let caught = if watch_expiry {
            &[SIGCHLD, SIGALRM][..]
        } else {
            &[SIGCHLD][..]
        };
        for &signal in caught {
            if !watched.contains(&signal) {
                if is_ignored(signal) {
                    set_default(signal);
                    ignore_in_child.push(signal);
                }
                watched.push(signal);
            }
        }
        if SIGPIPE_IGNORED_AT_START.load(Ordering::Relaxed) {
            ignore_in_child.push(SIGPIPE);
        }
        // The BSDs and macOS drop a signal whose default action is to ignore it even while it
        // is blocked: SIGCHLD gets a handler that does nothing, so that it waits to be taken.
        #[cfg(not(target_os = "linux"))]
        set_handler(SIGCHLD, nothing);
        mask(libc::SIG_BLOCK, &watched)?;
        #[cfg(debug_assertions)]
        debug_raise("LEASE_DEBUG_SIGNAL_DURING_INSTALL");
        Ok(Forwarder {
            watched,
            ignore_in_child,
        })
    }

    /// What the child's signal state must be made before it runs the command: the runtime's
    /// SIGPIPE back to default, and what was ignored when lease started ignored again (its
    /// mask is emptied).
    pub fn child_signals(&self) -> SignalPlan {
        SignalPlan {
            #[cfg(target_os = "linux")]
            reset: vec![SIGPIPE],
            #[cfg(not(target_os = "linux"))]
            reset: vec![SIGPIPE, SIGCHLD],
            ignore: self.ignore_in_child.clone(),
            death: if self.watched.contains(&SIGTERM) {
                SIGTERM
            } else {
                SIGKILL
            },
        }
    }

    /// The child has exited and lease is cleaning up: from now on a SIGINT or SIGTERM (a user
    /// or a supervisor losing patience) ends lease at once, with 128 + the signal. The token
    /// is dead already: `verify` denies it once its command is gone. What came meanwhile, as
    /// the child ended, is dropped; the other watched signals stay blocked until lease exits.
    pub fn finishing(self) {
        while take_pending(&self.watched).is_some() {}
        let stopping: Vec<c_int> = [SIGINT, SIGTERM]
            .into_iter()
            .filter(|signal| self.watched.contains(signal))
            .collect();
        for &signal in &stopping {
            set_handler(signal, end_now);
        }
        let _ = mask(libc::SIG_UNBLOCK, &stopping);
    }

    /// A stopping signal that arrived before the child started, if any. lease then cleans up
    /// and dies of it instead of starting the child. (Another one waits for the child, which
    /// gets it once it runs.)
    pub fn arrived_before_start(&mut self) -> Option<c_int> {
        let stopping: Vec<c_int> = self
            .watched
            .iter()
            .copied()
            .filter(|signal| STOPPING.contains(signal))
            .collect();
        take_pending(&stopping).map(|arrived| arrived.signal)
    }

    /// Waits for `child` to exit, forwarding signals to it meanwhile. Returns as soon as the
    /// child itself exits, whatever its own children still do. With a `deadline`, the child is
    /// ended when the lease expires (SIGTERM, then SIGKILL after the grace; or SIGKILL).
    pub fn wait(&mut self, pid: Pid, mut deadline: Option<Deadline<'_>>) -> io::Result<Waited> {
        let mut stage = Stage::Running;
        if let Some(deadline) = deadline.as_mut() {
            stage = deadline.on_alarm(stage, pid);
        }
        let watched = set_of(&self.watched);
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
            // Blocks until a watched signal is pending; SIGCHLD comes when the child exits.
            let Some(arrived) = next(&watched)? else {
                continue;
            };
            match (arrived.signal, deadline.as_mut()) {
                (SIGCHLD, _) => {}
                (SIGALRM, Some(deadline)) => {
                    // The timer's (from the kernel), or one a process sent, which may stand for
                    // both (two of a signal pending are one): the expiry is checked either way
                    // (a timer set off early is set again), and one that was sent is the
                    // command's too.
                    stage = deadline.on_alarm(stage, pid);
                    if arrived.sent {
                        forward(&arrived, pid);
                    }
                }
                _ => forward(&arrived, pid),
            }
        }
    }
}

/// A signal taken, and where it came from.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    signal: c_int,
    /// From the kernel: a terminal's (to its foreground process group), a timer's.
    from_kernel: bool,
    /// From a process (`kill`, `sigqueue`, `tgkill`).
    sent: bool,
}

/// Waits for one of `set`'s signals, which must be blocked, and takes it. `None` when
/// interrupted.
#[cfg(target_os = "linux")]
fn next(set: &libc::sigset_t) -> io::Result<Option<Arrived>> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set` is initialised; sigwaitinfo fills `info`, valid and writable.
    match unsafe { libc::sigwaitinfo(set, info.as_mut_ptr()) } {
        -1 => match io::Error::last_os_error() {
            err if err.kind() == io::ErrorKind::Interrupted => Ok(None),
            err => Err(err),
        },
        // SAFETY: sigwaitinfo returned a signal, so it filled `info`.
        signal => Ok(Some(arrived(signal, unsafe { info.assume_init() }.si_code))),
    }
}

/// Takes one of `signals` that is pending, if any, without waiting.
#[cfg(target_os = "linux")]
fn take_pending(signals: &[c_int]) -> Option<Arrived> {
    let set = set_of(signals);
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `next`; a zero timeout returns at once.
    match unsafe { libc::sigtimedwait(&set, info.as_mut_ptr(), &now) } {
        -1 => None,
        // SAFETY: sigtimedwait returned a signal, so it filled `info`.
        signal => Some(arrived(signal, unsafe { info.assume_init() }.si_code)),
    }
}

#[cfg(target_os = "linux")]
fn arrived(signal: c_int, code: c_int) -> Arrived {
    Arrived {
        signal,
        from_kernel: code == libc::SI_KERNEL,
        sent: matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL),
    }
}

/// Without `sigwaitinfo` (macOS), the origin is unknown: a signal counts as sent, so it is
/// always forwarded (a terminal's reaches a command in lease's process group twice), except
/// SIGALRM while it is the expiry timer, which then counts as the timer's.
#[cfg(not(target_os = "linux"))]
fn next(set: &libc::sigset_t) -> io::Result<Option<Arrived>> {
    let mut signal: c_int = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal taken into `signal`.
    match unsafe { libc::sigwait(set, &mut signal) } {
        0 => Ok(Some(Arrived {
            signal,
            from_kernel: false,
            sent: signal != SIGALRM,
        })),
        libc::EINTR => Ok(None),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(not(target_os = "linux"))]
fn take_pending(signals: &[c_int]) -> Option<Arrived> {
    let mut pending = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigpending fills the valid, writable set given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled by sigpending.
    let pending = unsafe { pending.assume_init() };
    // SAFETY: sigismember reads the initialised set.
    let signal = *signals
        .iter()
        .find(|&&signal| unsafe { libc::sigismember(&pending, signal) } == 1)?;
    // Pending and blocked: taken at once.
    next(&set_of(&[signal])).ok().flatten()
}

/// The set of `signals` (a number that is not a signal is left out).
fn set_of(signals: &[c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset initialises the set; sigaddset adds to it (refusing a bad number).
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &signal in signals {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        set.assume_init()
    }
}

/// Whether `signal`, sent by the kernel, is one a terminal sends to its whole foreground process
/// group, which the child (in lease's group) got too: Ctrl-C's SIGINT, Ctrl-\'s SIGQUIT, and the
/// SIGHUP of a hangup, unless lease is the session's leader (`ssh -t host 'exec lease run ...'`),
/// to which alone the kernel sends it. Any other signal from the kernel came to lease alone
/// (a timer lease inherited across its exec, as `alarm N; exec lease ...` sets): the command gets
/// it, as it would have bare.
fn from_the_terminal_to_the_group(signal: c_int) -> bool {
    match signal {
        SIGINT | SIGQUIT => true,
        SIGHUP => nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()),
        _ => false,
    }
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) `signals` in this thread; the threads it
/// starts afterwards inherit its mask. (nix's `SigSet` cannot hold the real-time signals.)
fn mask(how: c_int, signals: &[c_int]) -> io::Result<()> {
    let set = set_of(signals);
    // SAFETY: `set` is initialised; a null old mask is allowed.
    match unsafe { libc::pthread_sigmask(how, &set, ptr::null_mut()) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The handler of SIGINT and SIGTERM once the child is gone ([`Forwarder::finishing`]).
extern "C" fn end_now(signal: c_int) {
    // SAFETY: _exit is async-signal-safe, and ends the process without running anything else.
    unsafe { libc::_exit(128 + signal) }
}

/// A handler that does nothing (see [`Forwarder::install`]).
#[cfg(not(target_os = "linux"))]
extern "C" fn nothing(_: c_int) {}

/// Makes `handler` `signal`'s handler. It must be async-signal-safe.
fn set_handler(signal: c_int, handler: extern "C" fn(c_int)) {
    // SAFETY: an all-zero sigaction is valid (empty mask, no flags); the handlers given here
    // call nothing that is not async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as libc::sighandler_t;
        libc::sigaction(signal, &action, ptr::null_mut());
    }
}

/// Puts `signal` back to its default action.
fn set_default(signal: c_int) {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask and no flags.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, &default, ptr::null_mut());
    }
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
    /// Sent SIGTERM; SIGKILL is due at this moment, the end of the grace.
    Terminated(std::time::Instant),
    Killed,
}

impl Stage {
    /// The signal lease sent last at this stage.
    fn sent(self) -> Option<c_int> {
        match self {
            Stage::Running => None,
            Stage::Terminated(_) => Some(SIGTERM),
            Stage::Killed => Some(SIGKILL),
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
                        let kill_at = std::time::Instant::now() + self.grace;
                        let _ = kill(child, Signal::SIGTERM);
                        set_alarm(self.grace);
                        Stage::Terminated(kill_at)
                    }
                }
            }
            Stage::Terminated(kill_at) => {
                match kill_at.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => {
                        set_alarm(left);
                        stage
                    }
                    _ => {
                        let _ = kill(child, Signal::SIGKILL);
                        Stage::Killed
                    }
                }
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

/// Sends `arrived.signal` on to the child unless the child already got it from the terminal.
/// The child has not been reaped yet, so its pid cannot have been reused.
fn forward(arrived: &Arrived, child: Pid) {
    if arrived.from_kernel
        && from_the_terminal_to_the_group(arrived.signal)
        && getpgid(Some(child)).is_ok_and(|group| group == getpgrp())
    {
        return;
    }
    // The child may have exited a moment ago; its SIGCHLD ends the wait. (The real-time signals
    // have no `Signal` of their own.)
    // SAFETY: kill takes any pid and signal number; a bad one is an error, which is dropped.
    let _ = unsafe { libc::kill(child.as_raw(), arrived.signal) };
}

/// Debug builds only (`LEASE_DEBUG_SIGNAL_BEFORE_START=N`): lease sends itself signal N once
/// the command is started and held, before it may start: the window in which a stopping signal
/// must stop the start, which a signal sent from outside rarely hits.
#[cfg(debug_assertions)]
pub fn debug_signal_before_start() {
    debug_raise("LEASE_DEBUG_SIGNAL_BEFORE_START");
}

/// Debug builds only: lease sends itself the signal whose number `variable` holds, if set, to
/// hit a window of a few microseconds at will (`LEASE_DEBUG_SIGNAL_DURING_INSTALL`: as lease
/// starts watching, the moment its signals are blocked).
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
