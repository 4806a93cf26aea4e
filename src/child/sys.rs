//! The system calls the child makes between its start and its `exec`, with errors as values.
//!
//! On x86-64 Linux the child is started with `clone(CLONE_VM)` (see [`super::spawn`]): until its
//! `exec` it shares lease's memory, and with it lease's thread-local `errno` and thread id. So
//! it calls the kernel directly: the C library's wrappers would write `errno` under lease's
//! feet, and its `raise` would signal lease's thread instead of the child. Elsewhere the child
//! is forked, has memory of its own, and the same functions call the C library.
#![allow(unsafe_code)]

use std::ffi::c_char;

use nix::libc::{self, c_int};

/// An `errno` value.
pub type Errno = c_int;

/// Sets `signal`'s disposition to `handler` (`SIG_DFL` or `SIG_IGN`: no handler, so no
/// restorer is needed), with no flags and an empty mask.
pub fn set_disposition(signal: c_int, handler: libc::sighandler_t) -> Result<(), Errno> {
    imp::set_disposition(signal, handler)
}

/// Empties the signal mask.
pub fn unblock_all() -> Result<(), Errno> {
    imp::unblock_all()
}

/// The parent's pid.
pub fn parent() -> libc::pid_t {
    imp::parent()
}

/// Has `signal` sent to this process when the thread that started it dies.
#[cfg(target_os = "linux")]
pub fn set_death_signal(signal: c_int) -> Result<(), Errno> {
    imp::set_death_signal(signal)
}

/// Makes `to` a copy of `from` (`dup2`).
pub fn dup2(from: c_int, to: c_int) -> Result<(), Errno> {
    imp::dup2(from, to)
}

/// Reads into `buf`: how many bytes came.
pub fn read(fd: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
    imp::read(fd, buf)
}

/// Writes `buf` (once; what did not fit is not retried).
pub fn write(fd: c_int, buf: &[u8]) {
    imp::write(fd, buf);
}

/// Sends `signal` to this process.
pub fn signal_self(signal: c_int) {
    imp::signal_self(signal);
}

/// Sleeps for a millisecond (or until a signal).
pub fn sleep_a_millisecond() {
    imp::sleep_a_millisecond();
}

/// Ends this process with `code`, running nothing of lease's.
pub fn exit(code: c_int) -> ! {
    imp::exit(code)
}

/// Starts a process that shares this one's memory: `clone(CLONE_VM | SIGCHLD)`, the child on
/// `stack_top`, where it runs `main(arg)` and ends with what that returns. The C library's
/// `clone` is not used: before glibc 2.25 (which stopped caching the pid) its child wrote into
/// the parent's thread data.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of a stack that stays mapped, and `arg` valid,
/// for as long as the child runs before its `exec`; `main` may make only the calls of this
/// module (anything else could write lease's `errno`, heap or locks under its feet).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub unsafe fn clone_vm(
    main: extern "C" fn(*mut std::ffi::c_void) -> c_int,
    arg: *mut std::ffi::c_void,
    stack_top: *mut std::ffi::c_void,
) -> Result<libc::pid_t, Errno> {
    // SAFETY: the caller's promise.
    unsafe { imp::clone_vm(main, arg, stack_top) }
}

/// Whether lease runs under valgrind, which aborts on a `clone` it does not know (its client
/// request `RUNNING_ON_VALGRIND`: a sequence of rotations that is a no-op on a real CPU).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn under_valgrind() -> bool {
    imp::under_valgrind()
}

/// Replaces this process's program; returns only if that failed, with why.
///
/// # Safety
/// `path` must be a NUL-terminated string, and `argv` and `envp` null-terminated arrays of
/// them, all valid until the call returns.
pub unsafe fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Errno {
    // SAFETY: the caller's promise.
    unsafe { imp::execve(path, argv, envp) }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use super::{Errno, c_char, c_int, libc};

    /// One system call: the kernel's return value, `-errno` on failure.
    ///
    /// # Safety
    /// The arguments must be what system call `number` expects; memory they point to must be
    /// valid for it.
    #[inline(always)]
    unsafe fn syscall(number: libc::c_long, args: [usize; 4]) -> isize {
        let ret: isize;
        // SAFETY: `syscall` reads its number and arguments from these registers, returns in
        // rax and clobbers only rcx and r11; memory is the caller's promise.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") number as isize => ret,
                in("rdi") args[0],
                in("rsi") args[1],
                in("rdx") args[2],
                in("r10") args[3],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// The kernel's way of failing: -4095 to -1.
    fn checked(ret: isize) -> Result<usize, Errno> {
        if (-4095..0).contains(&ret) {
            Err(c_int::try_from(-ret).unwrap_or(libc::EINVAL))
        } else {
            Ok(ret.unsigned_abs())
        }
    }

    /// The kernel's `struct sigaction` on x86-64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }

    /// The size of the kernel's signal set.
    const SIGSET_SIZE: usize = 8;

    pub fn set_disposition(signal: c_int, handler: libc::sighandler_t) -> Result<(), Errno> {
        let action = KernelSigaction {
            handler,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        let signal = usize::try_from(signal).map_err(|_| libc::EINVAL)?;
        // SAFETY: a valid kernel sigaction, no old action wanted, the kernel's set size.
        let ret = unsafe {
            syscall(
                libc::SYS_rt_sigaction,
                [signal, (&raw const action) as usize, 0, SIGSET_SIZE],
            )
        };
        checked(ret).map(drop)
    }

    pub fn unblock_all() -> Result<(), Errno> {
        let empty: u64 = 0;
        let how = libc::SIG_SETMASK.unsigned_abs() as usize;
        // SAFETY: a valid, empty kernel signal set; no old mask wanted.
        let ret = unsafe {
            syscall(
                libc::SYS_rt_sigprocmask,
                [how, (&raw const empty) as usize, 0, SIGSET_SIZE],
            )
        };
        checked(ret).map(drop)
    }

    pub fn parent() -> libc::pid_t {
        // SAFETY: getppid takes nothing and cannot fail.
        let ret = unsafe { syscall(libc::SYS_getppid, [0; 4]) };
        libc::pid_t::try_from(ret).unwrap_or(0)
    }

    pub fn set_death_signal(signal: c_int) -> Result<(), Errno> {
        let option = libc::PR_SET_PDEATHSIG.unsigned_abs() as usize;
        let signal = usize::try_from(signal).map_err(|_| libc::EINVAL)?;
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and nothing else.
        let ret = unsafe { syscall(libc::SYS_prctl, [option, signal, 0, 0]) };
        checked(ret).map(drop)
    }

    pub fn dup2(from: c_int, to: c_int) -> Result<(), Errno> {
        let from = usize::try_from(from).map_err(|_| libc::EBADF)?;
        let to = usize::try_from(to).map_err(|_| libc::EBADF)?;
        // SAFETY: dup2 takes two descriptors and touches no memory.
        let ret = unsafe { syscall(libc::SYS_dup2, [from, to, 0, 0]) };
        checked(ret).map(drop)
    }

    pub fn read(fd: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
        let fd = usize::try_from(fd).map_err(|_| libc::EBADF)?;
        // SAFETY: `buf` is valid and writable for its length.
        let ret = unsafe {
            syscall(
                libc::SYS_read,
                [fd, buf.as_mut_ptr() as usize, buf.len(), 0],
            )
        };
        checked(ret)
    }

    pub fn write(fd: c_int, buf: &[u8]) {
        let Ok(fd) = usize::try_from(fd) else { return };
        // SAFETY: `buf` is valid for its length.
        unsafe { syscall(libc::SYS_write, [fd, buf.as_ptr() as usize, buf.len(), 0]) };
    }

    pub fn signal_self(signal: c_int) {
        // SAFETY: getpid takes nothing; kill takes a pid and a signal number.
        unsafe {
            let pid = syscall(libc::SYS_getpid, [0; 4]).unsigned_abs();
            syscall(libc::SYS_kill, [pid, signal.unsigned_abs() as usize, 0, 0]);
        }
    }

    pub fn sleep_a_millisecond() {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { syscall(libc::SYS_nanosleep, [(&raw const pause) as usize, 0, 0, 0]) };
    }

    pub unsafe fn clone_vm(
        main: extern "C" fn(*mut std::ffi::c_void) -> c_int,
        arg: *mut std::ffi::c_void,
        stack_top: *mut std::ffi::c_void,
    ) -> Result<libc::pid_t, Errno> {
        let flags = (libc::CLONE_VM | libc::SIGCHLD).unsigned_abs() as usize;
        let ret: isize;
        // SAFETY: clone(flags, stack, parent_tid, child_tid, tls) with no tid or TLS to set.
        // The parent gets the pid (or -errno) and jumps past the child's part. The child starts
        // on `stack_top` with a copy of the registers: it clears the frame pointer, calls
        // `main(arg)` (rsp is 16-byte aligned before the call, as the ABI wants) and exits with
        // its result; it never comes back into this function.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, {exit_group}",
                "syscall",
                "ud2",
                "2:",
                exit_group = const libc::SYS_exit_group,
                inlateout("rax") libc::SYS_clone as isize => ret,
                inlateout("rdi") flags => _,
                inlateout("rsi") stack_top => _,
                inlateout("rdx") 0usize => _,
                inlateout("r10") 0usize => _,
                inlateout("r8") 0usize => _,
                in("r12") arg,
                in("r13") main,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        checked(ret).map(|pid| libc::pid_t::try_from(pid).unwrap_or(libc::pid_t::MAX))
    }

    pub fn under_valgrind() -> bool {
        // Valgrind's client request: rdx = request(rax = &args), the default (0) on a real CPU.
        const RUNNING_ON_VALGRIND: usize = 0x1001;
        let args: [usize; 6] = [RUNNING_ON_VALGRIND, 0, 0, 0, 0, 0];
        let answer: usize;
        // SAFETY: four rotations of rdi by 128 bits in all leave it as it was, and exchanging
        // rbx with itself changes nothing; only valgrind gives the sequence a meaning, reading
        // `args` and writing rdx.
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                in("rax") args.as_ptr(),
                inout("rdx") 0usize => answer,
                inout("rdi") 0usize => _,
                options(nostack),
            );
        }
        answer != 0
    }

    pub fn exit(code: c_int) -> ! {
        loop {
            // SAFETY: exit_group takes a status and does not return.
            unsafe {
                syscall(
                    libc::SYS_exit_group,
                    [code.unsigned_abs() as usize, 0, 0, 0],
                )
            };
        }
    }

    pub unsafe fn execve(
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
    ) -> Errno {
        // SAFETY: the caller's promise (see `super::execve`).
        let ret = unsafe {
            syscall(
                libc::SYS_execve,
                [path as usize, argv as usize, envp as usize, 0],
            )
        };
        checked(ret).err().unwrap_or(libc::EINVAL)
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod imp {
    //! A forked child's: the C library's wrappers, `errno` read right after each.
    use super::{Errno, c_char, c_int, libc};

    fn last() -> Errno {
        nix::errno::Errno::last_raw()
    }

    fn checked(ret: c_int) -> Result<(), Errno> {
        if ret < 0 { Err(last()) } else { Ok(()) }
    }

    pub fn set_disposition(signal: c_int, handler: libc::sighandler_t) -> Result<(), Errno> {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); SIG_DFL and SIG_IGN
        // install no handler.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            checked(libc::sigaction(signal, &action, std::ptr::null_mut()))
        }
    }

    pub fn unblock_all() -> Result<(), Errno> {
        // SAFETY: a valid, emptied signal set; no old mask wanted.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            checked(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))
        }
    }

    pub fn parent() -> libc::pid_t {
        // SAFETY: getppid cannot fail.
        unsafe { libc::getppid() }
    }

    #[cfg(target_os = "linux")]
    pub fn set_death_signal(signal: c_int) -> Result<(), Errno> {
        let signal = libc::c_ulong::try_from(signal).map_err(|_| libc::EINVAL)?;
        // SAFETY: PR_SET_PDEATHSIG takes a signal number.
        checked(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) })
    }

    pub fn dup2(from: c_int, to: c_int) -> Result<(), Errno> {
        // SAFETY: dup2 touches no memory.
        checked(unsafe { libc::dup2(from, to) })
    }

    pub fn read(fd: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
        // SAFETY: `buf` is valid and writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| last())
    }

    pub fn write(fd: c_int, buf: &[u8]) {
        // SAFETY: `buf` is valid for its length.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }

    pub fn signal_self(signal: c_int) {
        // SAFETY: a forked child is single-threaded: raise signals it.
        unsafe { libc::raise(signal) };
    }

    pub fn sleep_a_millisecond() {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }

    pub fn exit(code: c_int) -> ! {
        // SAFETY: _exit runs no handler of lease's.
        unsafe { libc::_exit(code) }
    }

    pub unsafe fn execve(
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
    ) -> Errno {
        // SAFETY: the caller's promise.
        unsafe { libc::execve(path, argv, envp) };
        last()
    }
}
