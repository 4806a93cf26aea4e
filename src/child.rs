//! Starting the child: its command, the lease variables in its environment, and the signal
//! state it inherits.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::{ChildStderr, ChildStdout};
use std::ptr::NonNull;

use anyhow::Context as _;
use nix::fcntl::OFlag;
use nix::libc::{self, c_int};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::{Pid, pipe2};
use zeroize::Zeroize;

use crate::signals::SignalPlan;

mod sys;

use crate::exit::{Exit, ExitError};

/// What to run, in which environment.
#[derive(Debug)]
pub struct Spec<'a> {
    /// The program (looked up on `PATH` when it has no slash).
    pub program: &'a OsStr,
    /// Its arguments.
    pub args: &'a [OsString],
    /// Its complete environment (see [`environment`]).
    pub env: Vec<(OsString, OsString)>,
    /// Whether its stdout and stderr are pipes to lease (`--mask`) instead of lease's own.
    pub mask: bool,
}

/// How the command's environment is made from lease's own.
#[derive(Debug, Default)]
pub struct EnvRules<'a> {
    /// Start from nothing but `keep` (`--clean-env`).
    pub clean: bool,
    /// Variables kept by `--clean-env`.
    pub keep: &'a [String],
    /// Variables removed by name pattern (`--scrub`, `scrub_env`).
    pub scrub: Vec<&'a glob::Pattern>,
    /// Variables removed by name (an inherited token under the usual names).
    pub remove: Vec<&'a str>,
}

impl EnvRules<'_> {
    fn passes(&self, name: &OsStr) -> bool {
        let text = name.to_string_lossy();
        if self.clean {
            return self.keep.iter().any(|k| *k == text);
        }
        !self.remove.iter().any(|r| *r == text) && !self.scrub.iter().any(|p| p.matches(&text))
    }
}

/// The command's environment: what `rules` let through of `inherited`, less anything holding a
/// lease token, then the lease's own variables (which no rule removes), sorted by name.
pub fn environment(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    rules: &EnvRules<'_>,
    lease: Vec<(OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(name, _)| rules.passes(name))
        // The command gets one lease token, its own: any other (a parent's, copied under
        // another name) stays behind.
        .filter(|(name, value)| !holds_token(name) && !holds_token(value))
        .filter(|(name, _)| !lease.iter().any(|(own, _)| own == name))
        .collect();
    env.extend(lease);
    env.sort();
    env
}

/// Whether a variable's name or value holds something shaped like a lease token.
fn holds_token(text: &OsStr) -> bool {
    crate::token::holds_token(text.as_bytes())
}

/// A child that is started and held just before `exec`: it has its environment, its signal
/// state and its death signal, and waits for [`Held::start`]. Holding it lets lease record the
/// command's own identity (pid and start time) in the lease before the command runs a single
/// instruction, so `verify` can deny the token the moment the command is gone, whatever happens
/// to lease. Dropped without being started, the child is killed and reaped.
#[derive(Debug)]
pub struct Held {
    child: Child,
    go: Option<OwnedFd>,
    exec_error: Option<OwnedFd>,
    program: String,
    /// The read end of the command's stdout, with `mask`.
    pub stdout: Option<ChildStdout>,
    /// The read end of the command's stderr, with `mask`.
    pub stderr: Option<ChildStderr>,
}

/// Starts the child and holds it before `exec` (see [`Held`]). It stays in lease's process group
/// and session, so it keeps the terminal; its signal mask is empty; the signals in
/// `signals.reset` are back to their default action and those in `signals.ignore` ignored.
///
/// On Linux the child is told when lease dies: `PR_SET_PDEATHSIG` sends it SIGTERM (SIGKILL if
/// SIGTERM was ignored when lease started) if lease is killed, even with SIGKILL, before it;
/// the death signal is armed only after the child's dispositions are reset and its mask emptied,
/// so it takes its default action. If lease died before the death signal was armed, the child sees
/// another parent and never runs the command. Call from the main thread: the kernel ties the
/// death signal to the thread that started the child.
pub fn spawn(spec: Spec<'_>, signals: &SignalPlan) -> anyhow::Result<Held> {
    let program = spec.program.to_string_lossy().into_owned();
    let prepared = Prepared::new(&spec);
    wipe(spec.env);
    // Quoted as Rust would: a name with a line break stays on the error's one line.
    let program = program.escape_debug().to_string();
    let prepared = prepared.with_context(|| format!("cannot run '{program}'"))?;
    let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?;
    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?;
    let outputs = if spec.mask {
        Some((
            pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?,
            pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?,
        ))
    } else {
        None
    };
    let death = signals.death;
    let hooks = DebugHooks::from_env();
    #[cfg(all(debug_assertions, not(test)))]
    assert_every_handler_is_reset(signals);
    let start = Start::new(Inputs {
        prepared,
        signals: signals.clone(),
        death,
        lease_pid: nix::unistd::getpid().as_raw(),
        go: go_read.as_raw_fd(),
        exec_error: error_write.as_raw_fd(),
        streams: outputs
            .as_ref()
            .map(|((_, out), (_, err))| (out.as_raw_fd(), err.as_raw_fd())),
        hooks,
    })
    .context("cannot start the command: allocating its stack")?;
    // Every signal is blocked across the start, as posix_spawn does: one that comes meanwhile
    // stays pending, in lease (which takes the ones it watches) or in the child, where it takes
    // its default action once the child has reset its dispositions and unblocked it.
    let mut unblocked = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut unblocked),
    )
    .context("cannot start the command: blocking signals")?;
    let started = start.run();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&unblocked), None);
    let child = started.context("cannot start the command")?;
    drop((go_read, error_write));
    let (stdout, stderr) = match outputs {
        Some(((out, _), (err, _))) => (Some(ChildStdout::from(out)), Some(ChildStderr::from(err))),
        None => (None, None),
    };
    Ok(Held {
        child,
        go: Some(go_write),
        exec_error: Some(error_read),
        program,
        stdout,
        stderr,
    })
}

/// What the child needs from its start to its `exec`, prepared before it starts: it may not
/// allocate.
struct Inputs {
    prepared: Prepared,
    /// The signals put back to their default action, and those ignored.
    signals: SignalPlan,
    /// The signal it gets when lease dies.
    death: c_int,
    lease_pid: libc::pid_t,
    /// The read end of the go-ahead pipe.
    go: c_int,
    /// The write end of the pipe that carries exec's errno.
    exec_error: c_int,
    /// Its stdout and stderr, with `mask`.
    streams: Option<(c_int, c_int)>,
    hooks: DebugHooks,
}

/// The child's [`Inputs`] and the stack it starts on, at addresses that stay put. On x86-64
/// Linux the child shares lease's memory until its `exec` (`clone(CLONE_VM)`): no page table is
/// copied and no page of lease's becomes copy-on-write, which a fork costs on every run. So
/// both are freed only once the child is known to have exec'd or ended ([`Child`]).
struct Start {
    inputs: NonNull<Inputs>,
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    stack: Stack,
}

impl Start {
    fn new(inputs: Inputs) -> io::Result<Start> {
        Ok(Start {
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            stack: Stack::new()?,
            inputs: NonNull::from(Box::leak(Box::new(inputs))),
        })
    }

    /// Starts the child (held, see [`Held`]), which then owns this memory.
    ///
    /// On x86-64 Linux with `clone(CLONE_VM)`, unless that is refused: QEMU's user mode (an
    /// amd64 container on an arm64 host) answers `EINVAL` to a shared memory without a thread's
    /// other flags, a seccomp policy may answer `EPERM`, and valgrind aborts on it, so there
    /// (and on other systems) the child is forked. Either way it runs [`child_main`] and makes
    /// only the raw calls of [`sys`].
    fn run(self) -> io::Result<Child> {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        if !sys::under_valgrind() {
            // SAFETY: the child runs `child_main` on its own stack, which stays mapped (as do
            // its inputs) until it has exec'd or ended (`Child`); it makes only raw system calls
            // (`sys`), so it writes nothing of lease's: not errno, not a lock, not the heap.
            let cloned =
                unsafe { sys::clone_vm(child_main, self.inputs.as_ptr().cast(), self.stack.top()) };
            match cloned {
                Ok(pid) => return Ok(Child::new(pid, self)),
                Err(libc::EINVAL | libc::ENOSYS | libc::EPERM) => {}
                Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
        // SAFETY: the forked child only makes the raw system calls of `sys` on memory prepared
        // before the fork, then execs or exits.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => sys::exit(child_main(self.inputs.as_ptr().cast())),
            pid => Ok(Child::new(pid, self)),
        }
    }
}

/// A started child and the memory it may be using: dropped, it kills and reaps the child
/// first, so its [`Start`] is freed only once nothing runs on it. [`Child::release`] says the
/// child no longer uses it (it has exec'd, or is reaped).
#[derive(Debug)]
struct Child {
    /// 0 once released.
    pid: Pid,
    _start: Start,
}

impl Child {
    fn new(pid: libc::pid_t, start: Start) -> Child {
        Child {
            pid: Pid::from_raw(pid),
            _start: start,
        }
    }

    /// The pid, which this no longer kills or reaps.
    fn release(&mut self) -> Pid {
        std::mem::replace(&mut self.pid, Pid::from_raw(0))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.pid.as_raw() > 0 {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            reap(self.pid, 0);
        }
    }
}

impl Drop for Start {
    fn drop(&mut self) {
        // SAFETY: made by `Box::leak` in `new`; the child no longer reads it (see `Start`).
        drop(unsafe { Box::from_raw(self.inputs.as_ptr()) });
    }
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start").finish_non_exhaustive()
    }
}

/// The child's stack until its `exec`: mapped for it, with a guard page below, and unmapped
/// with [`Start`]. Only the pages it touches are ever allocated.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
struct Stack {
    base: NonNull<std::ffi::c_void>,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl Stack {
    /// The guard page and the stack above it.
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh anonymous mapping, nothing else is at its address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Stack::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        let Some(base) = NonNull::new(base).filter(|_| base != libc::MAP_FAILED) else {
            return Err(io::Error::last_os_error());
        };
        let stack = Stack { base };
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(base.as_ptr(), Stack::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's top, where it starts (it grows down), 16-byte aligned.
    fn top(&self) -> *mut std::ffi::c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.base.as_ptr().byte_add(Stack::SIZE) }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing uses any more (see `Start`).
        unsafe { libc::munmap(self.base.as_ptr(), Stack::SIZE) };
    }
}

/// The child's entry point, given its [`Inputs`].
extern "C" fn child_main(inputs: *mut std::ffi::c_void) -> c_int {
    // SAFETY: `Start::run` passes its inputs, which the child alone uses until its exec.
    unsafe { in_child(&mut *inputs.cast::<Inputs>()) }
}

impl Held {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid.as_raw().unsigned_abs()
    }

    /// Lets the child run the command, and waits until it has (or could not). A program that is
    /// not found gives exit 127; one that cannot be executed, 126. `meanwhile` runs while the
    /// child execs (lease would only wait there), once the child was let go.
    pub fn start(mut self, meanwhile: impl FnOnce()) -> anyhow::Result<Pid> {
        if let Some(go) = self.go.take()
            && let Err(err) = File::from(go).write_all(b"x")
        {
            // The held child is gone before it could start: a signal ended it (a Ctrl-C after
            // it unblocked signals, a kill), and lease ends the same way.
            let pid = self.child.release();
            let err = anyhow::Error::new(err).context("cannot start the command");
            return Err(ended_first(reap(pid, 0), err));
        }
        meanwhile();
        let Some(exec_error) = self.exec_error.take() else {
            return Ok(self.child.pid);
        };
        // The pipe closes on a successful exec (it is close-on-exec), or when the child dies;
        // else it carries errno.
        let mut errno = [0u8; 4];
        if File::from(exec_error).read_exact(&mut errno).is_err() {
            return Ok(self.child.release());
        }
        let errno = i32::from_ne_bytes(errno);
        reap(self.child.release(), 0);
        let program = &self.program;
        let (exit, why) = match errno {
            // A path to a file that is there: what it needs to run is not (bash: "required
            // file not found"); 127 all the same, as with bash, env and tini.
            libc::ENOENT if program.contains('/') && std::path::Path::new(program).is_file() => (
                Exit::NotFound,
                "it exists, but the interpreter its #! line names (or the loader it needs) was not found".to_owned(),
            ),
            libc::ENOENT | libc::ENOTDIR => (Exit::NotFound, "command not found".to_owned()),
            libc::EACCES | libc::EPERM => (Exit::CannotExecute, "permission denied".to_owned()),
            // The system's words, without Rust's "(os error N)" that no other message has.
            other => (
                Exit::CannotExecute,
                nix::errno::Errno::from_raw(other).desc().to_owned(),
            ),
        };
        Err(ExitError::new(exit, format!("cannot run '{program}': {why}")).into())
    }
}

impl Held {
    /// The error to end with when the held child turned out to be gone before its start (its
    /// identity could not be read): lease dies of the signal that ended it, if one did (a
    /// Ctrl-C, a kill); otherwise `err`. A child that still runs is killed and reaped.
    pub fn gone(mut self, err: anyhow::Error) -> anyhow::Error {
        let pid = self.child.release();
        match reap(pid, libc::WNOHANG) {
            Reaped::Running => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                reap(pid, 0);
                err
            }
            reaped => ended_first(reaped, err),
        }
    }
}

/// A signal that ended the held child before its start becomes lease's own end; else `err`.
fn ended_first(reaped: Reaped, err: anyhow::Error) -> anyhow::Error {
    match reaped {
        Reaped::Signaled(signal) => ExitError::new(
            Exit::Signal(signal),
            format!("cannot start the command: signal {signal} ended it first"),
        )
        .into(),
        _ => err,
    }
}

/// What became of a child waited for by [`reap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaped {
    /// It still runs (only when not waiting).
    Running,
    /// It exited, or cannot be waited for.
    Exited,
    /// It died of this signal.
    Signaled(c_int),
}

/// Reaps `pid`: waits for it, or with `WNOHANG` only takes it if it has already ended.
fn reap(pid: Pid, flags: c_int) -> Reaped {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable int for the kernel to fill.
        return match unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) } {
            0 => Reaped::Running,
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            // Not (or no longer) a child of lease's: nothing to wait for.
            -1 => Reaped::Exited,
            _ if libc::WIFSIGNALED(status) => Reaped::Signaled(libc::WTERMSIG(status)),
            _ => Reaped::Exited,
        };
    }
}

/// The command, its arguments and its environment as C strings, and every place `exec` will
/// look for the program: all allocated before the child starts, since it may not allocate.
struct Prepared {
    candidates: Vec<CString>,
    /// The strings `argv_ptrs` and `envp_ptrs` point into, kept alive until the exec.
    _strings: (Vec<CString>, Vec<CString>),
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh FILE ARG...`, for a file exec refuses as not an executable format (what
    /// `execvp` does); slot 1 is filled with the candidate in the child.
    sh_ptrs: Vec<*const libc::c_char>,
}

impl Drop for Prepared {
    /// The environment holds the token: its bytes are zeroed before they are freed.
    fn drop(&mut self) {
        for entry in self._strings.1.drain(..) {
            entry.into_bytes_with_nul().zeroize();
        }
    }
}

/// Zeroes the bytes of every variable of an environment (the token among them) as it is freed.
fn wipe(env: Vec<(OsString, OsString)>) {
    use std::os::unix::ffi::OsStringExt;
    for (name, value) in env {
        name.into_vec().zeroize();
        value.into_vec().zeroize();
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// `/bin/sh`, which runs a file without a `#!` line (as `execvp` does).
const SH: &CStr = c"/bin/sh";

impl Prepared {
    fn new(spec: &Spec<'_>) -> anyhow::Result<Prepared> {
        let c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| anyhow::anyhow!("an argument or variable holds a NUL byte"))
        };
        let program = spec.program.as_bytes();
        let candidates = if program.contains(&b'/') {
            vec![c(program)?]
        } else if program.is_empty() {
            Vec::new()
        } else {
            // The command's own PATH if it has one; else lease's (as with --clean-env).
            let path = spec
                .env
                .iter()
                .find(|(name, _)| name == "PATH")
                .map(|(_, value)| value.clone())
                .or_else(|| std::env::var_os("PATH"))
                .unwrap_or_else(|| "/bin:/usr/bin".into());
            path.as_bytes()
                .split(|b| *b == b':')
                .map(|dir| {
                    let dir = if dir.is_empty() { &b"."[..] } else { dir };
                    let mut full = dir.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(program);
                    c(&full)
                })
                .collect::<anyhow::Result<_>>()?
        };
        let mut argv = vec![c(program)?];
        for arg in spec.args {
            argv.push(c(arg.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(spec.env.len());
        for (name, value) in &spec.env {
            // Sized exactly (with the NUL), so that no copy of the token is left behind by a
            // reallocation: the one buffer is zeroed when `Prepared` is dropped.
            let mut entry = Vec::with_capacity(name.len() + value.len() + 2);
            entry.extend_from_slice(name.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            let entry = CString::new(entry)
                .map_err(|_| anyhow::anyhow!("an argument or variable holds a NUL byte"))?;
            envp.push(entry);
        }
        let pointers = |strings: &[CString]| {
            let mut ptrs: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            ptrs
        };
        let argv_ptrs = pointers(&argv);
        let envp_ptrs = pointers(&envp);
        let mut sh_ptrs = vec![SH.as_ptr(), std::ptr::null()];
        sh_ptrs.extend_from_slice(&argv_ptrs[1..]);
        Ok(Prepared {
            candidates,
            _strings: (argv, envp),
            argv_ptrs,
            envp_ptrs,
            sh_ptrs,
        })
    }
}

/// The child: signal state, death signal, output pipes, the wait for lease, then `exec`
/// (trying each place on PATH, as `execvp` does). Never returns.
///
/// # Safety
/// Only in the child, started by [`Start::run`] with every signal blocked: it makes only the
/// raw system calls of [`sys`], on memory prepared before its start; it allocates nothing and
/// takes no lock.
unsafe fn in_child(inputs: &mut Inputs) -> ! {
    let Inputs {
        prepared,
        signals,
        death,
        lease_pid,
        go,
        exec_error,
        streams,
        hooks,
    } = inputs;
    if hooks.signal_after_fork != 0 {
        sys::signal_self(hooks.signal_after_fork);
    }
    // lease's dispositions are still the child's, with every signal blocked. lease catches no
    // signal while its command starts (it blocks the ones it watches: a handler of its here
    // would swallow a signal, and exec would go ahead; `assert_every_handler_is_reset` in debug
    // builds, and `signals::lease_handles_no_signal_its_command_does_not_get_back_at_default`,
    // hold it to that); `signals.reset` is SIGPIPE, which lease ignores. Only then is the mask
    // emptied.
    for &signal in &signals.reset {
        let _ = sys::set_disposition(signal, libc::SIG_DFL);
    }
    for &signal in &signals.ignore {
        let _ = sys::set_disposition(signal, libc::SIG_IGN);
    }
    let _ = sys::unblock_all();
    #[cfg(target_os = "linux")]
    if sys::set_death_signal(*death).is_err() || sys::parent() != *lease_pid {
        sys::exit(127);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = death;
    if let Some((out, err)) = *streams
        && let Err(errno) = sys::dup2(out, 1).and_then(|()| sys::dup2(err, 2))
    {
        fail(*exec_error, errno);
    }
    // Wait for lease to record the lease; an end of stream means it gave up.
    let mut byte = [0u8];
    loop {
        match sys::read(*go, &mut byte) {
            Ok(1) => break,
            Err(libc::EINTR) => {}
            _ => sys::exit(127),
        }
    }
    if hooks.hold_before_exec {
        hold_while_parent_is(*lease_pid);
    }
    let mut denied = false;
    let mut last = libc::ENOENT;
    for candidate in &prepared.candidates {
        // SAFETY: NUL-terminated strings and null-terminated arrays, alive in `prepared`.
        last = unsafe {
            sys::execve(
                candidate.as_ptr(),
                prepared.argv_ptrs.as_ptr(),
                prepared.envp_ptrs.as_ptr(),
            )
        };
        if last == libc::ENOEXEC
            && let Some(file) = prepared.sh_ptrs.get_mut(1)
        {
            *file = candidate.as_ptr();
            // SAFETY: as above; `sh_ptrs` is `/bin/sh`, the file, then the arguments.
            last = unsafe {
                sys::execve(
                    SH.as_ptr(),
                    prepared.sh_ptrs.as_ptr(),
                    prepared.envp_ptrs.as_ptr(),
                )
            };
        }
        match last {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => break,
        }
    }
    if denied && matches!(last, libc::ENOENT | libc::ENOTDIR) {
        last = libc::EACCES;
    }
    fail(*exec_error, last)
}

/// Reports `errno`, a failure before exec, to lease and exits.
fn fail(exec_error: c_int, errno: sys::Errno) -> ! {
    sys::write(exec_error, &errno.to_ne_bytes());
    sys::exit(127)
}

/// Debug builds of lease only: panics if lease has a handler for a signal the child does not
/// put back to default, which would reopen the window in which that signal is swallowed.
#[cfg(all(debug_assertions, not(test)))]
fn assert_every_handler_is_reset(signals: &SignalPlan) {
    for signal in 1..=64 {
        // SAFETY: a null new action only reads the disposition into `old`, a valid sigaction.
        let handled = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
        };
        assert!(
            !handled || signals.reset.contains(&signal),
            "lease handles signal {signal}, which its command does not get back at default"
        );
    }
}

/// Points where a debug build lets the test suite act inside the window a random signal rarely
/// hits; read before the child starts, since it may not allocate. Release builds have none.
#[derive(Debug, Clone, Copy, Default)]
struct DebugHooks {
    /// `LEASE_DEBUG_HOLD_BEFORE_EXEC`: the child waits between arming the death signal and
    /// exec until lease is gone (see [`hold_while_parent_is`]), so a test can kill lease there.
    hold_before_exec: bool,
    /// `LEASE_DEBUG_SIGNAL_AFTER_FORK=N`: the child sends itself signal N right after its start,
    /// while lease's handlers are still installed in it.
    signal_after_fork: c_int,
}

impl DebugHooks {
    #[cfg(debug_assertions)]
    fn from_env() -> DebugHooks {
        DebugHooks {
            hold_before_exec: std::env::var_os("LEASE_DEBUG_HOLD_BEFORE_EXEC").is_some(),
            signal_after_fork: std::env::var("LEASE_DEBUG_SIGNAL_AFTER_FORK")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }

    #[cfg(not(debug_assertions))]
    fn from_env() -> DebugHooks {
        DebugHooks::default()
    }
}

/// Debug builds only (`LEASE_DEBUG_HOLD_BEFORE_EXEC`): waits, at most 10 s, until lease is no
/// longer this process's parent, then lets exec go ahead. A child still alive by then has
/// survived its wrapper's death. Call between the child's start and its exec only.
fn hold_while_parent_is(lease_pid: libc::pid_t) {
    for _ in 0..10_000 {
        if sys::parent() != lease_pid {
            return;
        }
        sys::sleep_a_millisecond();
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
    use nix::unistd::ForkResult;

    use super::*;

    /// One held child at a time: a child forked by one test would hold the pipe ends of
    /// another test's child, which then never sees them close.
    static FORKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_fork_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        FORKING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A secret that only these tests put in an environment.
    const SECRET: &str = "agt_child-tests-secret-that-must-be-zeroed";

    fn hold(env: Vec<(OsString, OsString)>) -> Held {
        let spec = Spec {
            program: OsStr::new("sleep"),
            args: &[OsString::from("60")],
            env,
            mask: false,
        };
        let plan = SignalPlan {
            reset: vec![libc::SIGTERM],
            ignore: Vec::new(),
            death: libc::SIGTERM,
        };
        spawn(spec, &plan).expect("starting a held child")
    }

    /// Whether `pid` is no longer a child of this process: exited and reaped.
    fn reaped(pid: Pid) -> bool {
        waitpid(pid, Some(WaitPidFlag::WNOHANG)) == Err(Errno::ECHILD)
    }

    #[test]
    fn reaping_tells_a_running_an_exited_and_a_killed_child_apart() {
        let _one = one_fork_at_a_time();
        // SAFETY: each child only calls async-signal-safe functions, then exits.
        let fork = |code: Option<c_int>| match unsafe { nix::unistd::fork() }.expect("fork") {
            ForkResult::Child => unsafe {
                match code {
                    Some(code) => libc::_exit(code),
                    None => loop {
                        libc::pause();
                    },
                }
            },
            ForkResult::Parent { child } => child,
        };
        /// Kills the paused child however the test ends, so that it never outlives it.
        struct Paused(Pid);
        impl Drop for Paused {
            fn drop(&mut self) {
                let _ = kill(self.0, Signal::SIGKILL);
                let _ = waitpid(self.0, None);
            }
        }
        let exits = fork(Some(3));
        assert_eq!(reap(exits, 0), Reaped::Exited);
        let runs = Paused(fork(None));
        assert_eq!(reap(runs.0, libc::WNOHANG), Reaped::Running);
        kill(runs.0, Signal::SIGKILL).expect("kill");
        assert_eq!(reap(runs.0, 0), Reaped::Signaled(libc::SIGKILL));
        // Reaped: its pid may be anyone's now, so the guard must not kill it again.
        let reaped = runs.0;
        std::mem::forget(runs);
        assert_eq!(reap(reaped, 0), Reaped::Exited, "a pid reaped already");
    }

    #[test]
    fn a_held_child_dropped_without_being_started_is_killed_and_reaped() {
        let _one = one_fork_at_a_time();
        let held = hold(Vec::new());
        let pid = held.child.pid;
        drop(held);
        assert!(reaped(pid), "the held child {pid} is left behind");
    }

    #[test]
    fn starting_a_held_child_that_died_meanwhile_is_an_error_and_it_is_reaped() {
        let _one = one_fork_at_a_time();
        let held = hold(Vec::new());
        let pid = held.child.pid;
        kill(pid, Signal::SIGKILL).expect("killing the held child");
        // Wait for its death without reaping it, so that `start` writes to a closed pipe.
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).expect("waitid");
        let err = held
            .start(|| ())
            .expect_err("a dead child cannot be started");
        assert_eq!(
            err.to_string(),
            "cannot start the command: signal 9 ended it first"
        );
        let exit = err.downcast_ref::<ExitError>().map(ExitError::exit);
        assert_eq!(exit, Some(Exit::Signal(libc::SIGKILL)));
        assert!(reaped(pid), "the dead child {pid} is left a zombie");
    }

    #[test]
    fn the_environment_and_its_copy_for_exec_are_zeroed_before_they_are_freed() {
        let _one = one_fork_at_a_time();
        let freed = crate::freed::blocks_freed_holding(SECRET.as_bytes(), || {
            let env = vec![(OsString::from("LEASE_TOKEN"), OsString::from(SECRET))];
            drop(hold(env));
        });
        assert_eq!(freed, 0, "blocks holding the token were freed unzeroed");
    }

    #[test]
    fn the_childs_failed_execs_leave_the_errno_of_lease_alone() {
        let _one = one_fork_at_a_time();
        // Twenty places to look and none holds the program: the child fails twenty execs,
        // sharing this thread's memory (on x86-64 Linux), before it reports and exits. The C
        // library's wrappers would leave ENOENT (or EINVAL) in this thread's errno.
        let path: Vec<String> = (0..20)
            .map(|i| format!("/lease-test-missing-{i}"))
            .collect();
        let spec = Spec {
            program: OsStr::new("lease-test-no-such-program"),
            args: &[],
            env: vec![(OsString::from("PATH"), OsString::from(path.join(":")))],
            mask: false,
        };
        // SIGKILL's action cannot be changed: the child's resets fail too.
        let plan = SignalPlan {
            reset: vec![libc::SIGTERM, libc::SIGKILL],
            ignore: vec![libc::SIGKILL],
            death: libc::SIGTERM,
        };
        let held = spawn(spec, &plan).expect("starting a held child");
        Errno::set_raw(4242);
        let err = held.start(|| ()).expect_err("the program is nowhere");
        assert_eq!(
            Errno::last_raw(),
            4242,
            "the child wrote this thread's errno"
        );
        assert_eq!(
            err.to_string(),
            "cannot run 'lease-test-no-such-program': command not found"
        );
    }

    #[test]
    fn debug_shows_no_environment() {
        let env = vec![(OsString::from("LEASE_TOKEN"), OsString::from(SECRET))];
        let spec = Spec {
            program: OsStr::new("true"),
            args: &[],
            env,
            mask: false,
        };
        let prepared = Prepared::new(&spec).expect("preparing");
        assert_eq!(format!("{prepared:?}"), "Prepared { .. }");
    }
}
