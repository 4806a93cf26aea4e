//! The user's home and base directories, and the ids of user and group names, read from
//! `/etc/passwd` and `/etc/group` themselves.
//!
//! lease never asks the C library for an account (`getpwuid`, `getpwnam`, `getgrnam`): the
//! release binary is linked statically, and a name or uid that the files do not hold is then
//! looked up through a module the C library loads at run time (Debian's `passwd: files
//! systemd` loads `libnss_systemd.so`), which crashes a static binary. A container's uid
//! without an entry and without `$HOME`, or a typo in `operators`, must get an error line, not
//! a segmentation fault. Accounts that only a directory service knows (LDAP, sssd) are
//! therefore not found by name: give their numeric ids.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The most of `/etc/passwd` or `/etc/group` read.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// `$XDG_CONFIG_HOME`, else `~/.config` (on macOS `~/Library/Application Support`).
pub fn config_dir() -> Option<PathBuf> {
    match base_dirs() {
        Some(dirs) => Some(dirs.config_dir().to_path_buf()),
        None => xdg("XDG_CONFIG_HOME").or_else(|| Some(home()?.join(".config"))),
    }
}

/// `$XDG_STATE_HOME`, else `~/.local/state` (on macOS `~/Library/Application Support`).
pub fn state_dir() -> Option<PathBuf> {
    match base_dirs() {
        Some(dirs) => Some(
            dirs.state_dir()
                .unwrap_or_else(|| dirs.data_local_dir())
                .to_path_buf(),
        ),
        None => xdg("XDG_STATE_HOME").or_else(|| Some(home()?.join(".local").join("state"))),
    }
}

/// The platform's base directories, when `$HOME` is set (`directories` would otherwise ask
/// the C library for the home).
fn base_dirs() -> Option<directories::BaseDirs> {
    std::env::var_os("HOME")
        .is_some_and(|home| !home.is_empty())
        .then(directories::BaseDirs::new)
        .flatten()
}

/// An XDG variable holding an absolute path (the specification ignores a relative one).
fn xdg(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
}

/// The home of the real uid in `/etc/passwd` (asked only when `$HOME` is not set).
fn home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let uid = nix::unistd::getuid().as_raw().to_string();
    let passwd = read(Path::new("/etc/passwd"))?;
    entries(&passwd)
        .find(|fields| fields.get(2) == Some(&uid.as_bytes()))
        .and_then(|fields| fields.get(5).copied())
        .filter(|home| home.starts_with(b"/"))
        .map(|home| PathBuf::from(std::ffi::OsStr::from_bytes(home)))
}

/// The uid of the user called `name` in `/etc/passwd`.
pub fn uid_of(name: &str) -> Option<u32> {
    id_of(&read(Path::new("/etc/passwd"))?, name)
}

/// The gid of the group called `name` in `/etc/group`.
pub fn gid_of(name: &str) -> Option<u32> {
    id_of(&read(Path::new("/etc/group"))?, name)
}

/// The id (third field) of the first entry called `name` in a passwd or group file's bytes
/// (whatever the other fields hold: a GECOS field in Latin-1 is no reason to fail).
fn id_of(text: &[u8], name: &str) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    entries(text)
        .find(|fields| fields.first() == Some(&name.as_bytes()))
        .and_then(|fields| std::str::from_utf8(fields.get(2)?).ok()?.parse().ok())
}

/// The entries of a passwd or group file, split at `:`: blank lines, comments and NIS
/// inclusions (`+`, `-`) left out.
fn entries(text: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty() && !matches!(line[0], b'#' | b'+' | b'-'))
        .map(|line| line.split(|b| *b == b':').collect())
}

/// The whole file, or nothing: one larger than [`MAX_FILE`] is not read in part (a line cut
/// short could give another id).
fn read(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= MAX_FILE).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_the_files_own_lines_only() {
        let passwd = b"\
# a comment
root:x:0:0:root:/root:/bin/bash
+nis::::::
-excluded:x:7:7::/:/bin/sh

agent:x:1001:1001:An Agent \xe9,,,:/home/agent:/bin/sh
agent:x:1002:1002::/home/again:/bin/sh
broken:x:notanumber:0::/:/bin/sh
";
        assert_eq!(id_of(passwd, "root"), Some(0));
        assert_eq!(id_of(passwd, "agent"), Some(1001), "the first entry counts");
        assert_eq!(id_of(passwd, "+nis"), None);
        assert_eq!(id_of(passwd, "-excluded"), None);
        assert_eq!(id_of(passwd, "excluded"), None);
        assert_eq!(id_of(passwd, "broken"), None);
        assert_eq!(id_of(passwd, "nobody-here"), None);
        assert_eq!(id_of(passwd, ""), None);
        assert_eq!(
            id_of(b":x:3:3::/:/bin/sh", ""),
            None,
            "an empty name is no one's"
        );
        assert_eq!(id_of(b"agents:x:1005:alice,bob", "agents"), Some(1005));
    }
}
