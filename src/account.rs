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

use std::ffi::OsString;
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
    let uid = nix::unistd::getuid().as_raw().to_string();
    let passwd = read(Path::new("/etc/passwd"))?;
    entries(&passwd)
        .find(|fields| fields.get(2) == Some(&uid.as_str()))
        .and_then(|fields| fields.get(5).copied())
        .filter(|home| home.starts_with('/'))
        .map(|home| PathBuf::from(OsString::from(home)))
}

/// The uid of the user called `name` in `/etc/passwd`.
pub fn uid_of(name: &str) -> Option<u32> {
    id_of(&read(Path::new("/etc/passwd"))?, name)
}

/// The gid of the group called `name` in `/etc/group`.
pub fn gid_of(name: &str) -> Option<u32> {
    id_of(&read(Path::new("/etc/group"))?, name)
}

/// The id (third field) of the first entry called `name` in a passwd or group file's text.
fn id_of(text: &str, name: &str) -> Option<u32> {
    entries(text)
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| fields.get(2)?.parse().ok())
}

/// The entries of a passwd or group file, split at `:`: blank lines, comments and NIS
/// inclusions (`+`, `-`) left out.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with(['#', '+', '-']))
        .map(|line| line.split(':').collect())
}

fn read(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_the_files_own_lines_only() {
        let passwd = "\
# a comment
root:x:0:0:root:/root:/bin/bash
+nis::::::
-excluded:x:7:7::/:/bin/sh

agent:x:1001:1001:An Agent,,,:/home/agent:/bin/sh
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
        assert_eq!(id_of("agents:x:1005:alice,bob", "agents"), Some(1005));
    }
}
