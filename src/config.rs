//! The optional config file: `$XDG_CONFIG_HOME/lease/config.toml`, or `--config`/`LEASE_CONFIG`.
//!
//! Every key is optional; a missing default file means the built-in defaults. A file named
//! explicitly must exist. Unknown keys and bad values are errors naming the file and the line.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::ttl;

/// The default name of the variable that carries the token.
pub const DEFAULT_TOKEN_ENV: &str = "LEASE_TOKEN";

/// Settings after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the settings came from, if any.
    pub path: Option<PathBuf>,
    /// TTL for leases when `--ttl` is not given.
    pub default_ttl: Duration,
    /// The longest TTL that may be asked for.
    pub max_ttl: Duration,
    /// The variable that carries the token to the child and that `verify` reads.
    pub token_env: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: None,
            default_ttl: ttl::DEFAULT_TTL,
            max_ttl: ttl::DEFAULT_MAX_TTL,
            token_env: DEFAULT_TOKEN_ENV.to_owned(),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_ttl: Option<DurationValue>,
    max_ttl: Option<DurationValue>,
    token_env: Option<String>,
}

/// A duration written as whole seconds (`600`) or as text (`"10m"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn parse(&self) -> Result<Duration> {
        match self {
            DurationValue::Seconds(seconds) => ttl::parse(&seconds.to_string()),
            DurationValue::Text(text) => ttl::parse(text),
        }
    }
}

impl Config {
    /// Loads the config: from `explicit` if given (it must exist), else from the default
    /// location if a file is there, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let (path, required) = match explicit {
            Some(path) => (Some(path.to_path_buf()), true),
            None => (default_path(), false),
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading config {}", path.display()));
            }
        };
        Config::parse(&text, &path)
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let shown = path.display();
        let file: File = toml::from_str(text).map_err(|err| {
            let line = unknown_key_line(text, err.message()).or_else(|| {
                err.span()
                    .map(|span| text[..span.start.min(text.len())].lines().count().max(1))
            });
            let message = err.message().trim_end().replace('\n', " ");
            match line {
                Some(line) => anyhow::anyhow!("invalid config {shown}: line {line}: {message}"),
                None => anyhow::anyhow!("invalid config {shown}: {message}"),
            }
        })?;
        let mut config = Config {
            path: Some(path.to_path_buf()),
            ..Config::default()
        };
        if let Some(value) = &file.max_ttl {
            config.max_ttl = value
                .parse()
                .with_context(|| format!("invalid config {shown}: max_ttl"))?;
        }
        if let Some(value) = &file.default_ttl {
            config.default_ttl = value
                .parse()
                .with_context(|| format!("invalid config {shown}: default_ttl"))?;
        } else {
            config.default_ttl = config.default_ttl.min(config.max_ttl);
        }
        if config.default_ttl > config.max_ttl {
            bail!(
                "invalid config {shown}: default_ttl ({}) is longer than max_ttl ({})",
                ttl::human(config.default_ttl),
                ttl::human(config.max_ttl)
            );
        }
        if let Some(name) = file.token_env {
            validate_env_name(&name)
                .with_context(|| format!("invalid config {shown}: token_env"))?;
            config.token_env = name;
        }
        Ok(config)
    }

    /// The TTL for a new lease: `requested` or the default, checked against `max_ttl`.
    pub fn ttl(&self, requested: Option<Duration>) -> Result<Duration> {
        let ttl = requested.unwrap_or(self.default_ttl);
        if ttl > self.max_ttl {
            let source = match &self.path {
                Some(path) => format!("max_ttl in {}", path.display()),
                None => "the default max_ttl".to_owned(),
            };
            bail!(
                "ttl {} is too long: {source} allows at most {}; ask for less with --ttl",
                ttl::human(ttl),
                ttl::human(self.max_ttl)
            );
        }
        Ok(ttl)
    }
}

/// Checks that `name` can be an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!(
            "'{}' is not a valid environment variable name (use letters, digits and _, not starting with a digit)",
            name.escape_debug()
        );
    }
    Ok(())
}

/// toml reports an unknown key with the span of its whole table; find the key's own line.
fn unknown_key_line(text: &str, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

fn default_path() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|dirs| dirs.config_dir().join("lease").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/lease.toml"))
    }

    #[test]
    fn all_keys_are_optional() {
        let config = parse("").expect("empty config");
        assert_eq!(config.default_ttl, ttl::DEFAULT_TTL);
        assert_eq!(config.token_env, DEFAULT_TOKEN_ENV);
    }

    #[test]
    fn reads_durations_as_seconds_or_text() {
        let config =
            parse("default_ttl = 120\nmax_ttl = \"1h\"\ntoken_env = \"MY_TOKEN\"").expect("ok");
        assert_eq!(config.default_ttl, Duration::from_secs(120));
        assert_eq!(config.max_ttl, Duration::from_secs(3600));
        assert_eq!(config.token_env, "MY_TOKEN");
        assert!(config.ttl(Some(Duration::from_secs(3601))).is_err());
    }

    #[test]
    fn errors_name_the_file_key_and_line() {
        let err = format!(
            "{:#}",
            parse("max_ttl = \"1h\"\ncolour = 1").expect_err("unknown key")
        );
        assert!(
            err.contains("/etc/lease.toml") && err.contains("colour") && err.contains("line 2"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("default_ttl = \"2h\"\nmax_ttl = \"1h\"").expect_err("too long")
        );
        assert!(err.contains("default_ttl"), "{err}");
        let err = format!("{:#}", parse("token_env = \"1X\"").expect_err("bad name"));
        assert!(err.contains("token_env"), "{err}");
    }
}
