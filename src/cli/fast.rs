//! The usual command lines of the two subcommands on every hot path, `lease [GLOBAL]... run
//! [OPTION]... -- CMD...` and `lease [GLOBAL]... verify [OPTION]... ACTION`, read without
//! building clap's definition of the whole command line (a third of a short run's instructions,
//! and pages of code a run would otherwise touch).
//!
//! It accepts a strict subset of what clap accepts, into the same structs: long options, each
//! at most once, as `--name value` or `--name=value`; `-v`; values that are not empty and do not
//! begin with `-`, and that the same value parsers accept. Anything else (help, a short option
//! other than `-v`, a repeated or unknown option, a conflict, a value clap would refuse or
//! might read differently) returns `None`, and clap parses the line: every error, and every
//! line that is not plainly one of these, is clap's. The unit tests hold it to that: whatever
//! this accepts, clap parses to the same structs.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use super::args::{Cli, MintArgs, RunArgs, Sub, VerifyArgs};
use super::values::{parse_env_name, parse_glob, parse_on_expiry, parse_token_env, parse_ttl};

/// The command line as clap would parse it, if it is a plain `run` or `verify`.
pub(super) fn parse(args: &[OsString]) -> Option<Cli> {
    // clap parses these variables whether or not their option is given, and refuses an empty
    // path or a broker address that is not UTF-8: such a line is clap's.
    let empty = |name| env(name).is_some_and(|value| value.is_empty());
    if empty("LEASE_STATE_DIR")
        || empty("LEASE_CONFIG")
        || env("LEASE_BROKER").is_some_and(|value| value.to_str().is_none())
    {
        return None;
    }
    let mut words = Words {
        rest: args.get(1..)?,
    };
    let mut globals = Globals::default();
    let sub = loop {
        let word = words.next_str()?;
        if !globals.take(word, &mut words)? {
            break word;
        }
    };
    let command = match sub {
        "run" => Sub::Run(run(&mut words, &mut globals)?),
        "verify" => Sub::Verify(verify(&mut words, &mut globals)?),
        _ => return None,
    };
    Some(Cli {
        state_dir: globals
            .state_dir
            .or_else(|| env("LEASE_STATE_DIR").map(PathBuf::from)),
        config: globals
            .config
            .or_else(|| env("LEASE_CONFIG").map(PathBuf::from)),
        verbose: globals.verbose,
        broker: match globals.broker {
            Some(broker) => Some(broker),
            None => match env("LEASE_BROKER") {
                Some(value) => Some(value.into_string().ok()?),
                None => None,
            },
        },
        command,
    })
}

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// The words of the command line not read yet.
struct Words<'a> {
    rest: &'a [OsString],
}

impl<'a> Words<'a> {
    fn next(&mut self) -> Option<&'a OsStr> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// The next word, if it is UTF-8.
    fn next_str(&mut self) -> Option<&'a str> {
        self.next()?.to_str()
    }

    /// The value of option `name` given as `word`: after its `=`, or the next word.
    fn value(&mut self, word: &'a str, name: &str) -> Option<&'a str> {
        let value = match word.strip_prefix(name)? {
            "" => self.next_str()?,
            inline => inline.strip_prefix('=')?,
        };
        (!value.is_empty() && !value.starts_with('-')).then_some(value)
    }
}

/// The long name of `word` (`--name` or `--name=value`), if it is a long option.
fn long_name(word: &str) -> Option<&str> {
    let name = word.strip_prefix("--")?;
    Some(name.split_once('=').map_or(name, |(name, _)| name))
}

/// Sets `slot` once; a second time is clap's to refuse.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// Sets a flag once; `--flag=x` and a second time are clap's to refuse.
fn flag(slot: &mut bool, word: &str) -> Option<()> {
    if *slot || word.contains('=') {
        return None;
    }
    *slot = true;
    Some(())
}

/// The options every subcommand takes, before or after its name.
#[derive(Default)]
struct Globals {
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    verbose: bool,
    broker: Option<String>,
}

impl Globals {
    /// Takes `word` if it is a global option: `Some(true)`; `Some(false)` if it is not one;
    /// `None` if it is one that only clap should read.
    fn take<'a>(&mut self, word: &'a str, words: &mut Words<'a>) -> Option<bool> {
        if word == "-v" {
            flag(&mut self.verbose, word)?;
            return Some(true);
        }
        match long_name(word) {
            Some("state-dir") => once(
                &mut self.state_dir,
                words.value(word, "--state-dir")?.into(),
            )?,
            Some("config") => once(&mut self.config, words.value(word, "--config")?.into())?,
            Some("broker") => once(&mut self.broker, words.value(word, "--broker")?.into())?,
            Some("verbose") => flag(&mut self.verbose, word)?,
            _ => return Some(false),
        }
        Some(true)
    }
}

fn run(words: &mut Words<'_>, globals: &mut Globals) -> Option<RunArgs> {
    let mut args = RunArgs {
        mint: MintArgs {
            profile: None,
            scope: Vec::new(),
            ttl: None,
            uses: None,
            no_parent: false,
        },
        env: None,
        on_expiry: None,
        grace: None,
        scrub: Vec::new(),
        upstream: Vec::new(),
        clean_env: false,
        keep: Vec::new(),
        print_env: false,
        mask: false,
        receipt: None,
        command: Vec::new(),
    };
    let mint = &mut args.mint;
    loop {
        let word = words.next_str()?;
        if word == "--" {
            break;
        }
        if globals.take(word, words)? {
            continue;
        }
        match long_name(word)? {
            "scope" => mint.scope.push(words.value(word, "--scope")?.to_owned()),
            "ttl" => once(&mut mint.ttl, parse_ttl(words.value(word, "--ttl")?).ok()?)?,
            "uses" => {
                let uses = crate::scope::parse_uses(words.value(word, "--uses")?)?;
                once(&mut mint.uses, uses)?;
            }
            "profile" => once(
                &mut mint.profile,
                words.value(word, "--profile")?.to_owned(),
            )?,
            "no-parent" => flag(&mut mint.no_parent, word)?,
            "env" => once(
                &mut args.env,
                parse_token_env(words.value(word, "--env")?).ok()?,
            )?,
            "on-expiry" => once(
                &mut args.on_expiry,
                parse_on_expiry(words.value(word, "--on-expiry")?).ok()?,
            )?,
            "grace" => once(
                &mut args.grace,
                parse_ttl(words.value(word, "--grace")?).ok()?,
            )?,
            "scrub" => args
                .scrub
                .push(parse_glob(words.value(word, "--scrub")?).ok()?),
            "clean-env" => flag(&mut args.clean_env, word)?,
            "mask" => flag(&mut args.mask, word)?,
            "receipt" => once(
                &mut args.receipt,
                PathBuf::from(words.value(word, "--receipt")?),
            )?,
            // --keep, --print-env, help, anything else: clap's.
            _ => return None,
        }
    }
    args.command = words.rest.to_vec();
    (!args.command.is_empty()).then_some(args)
}

fn verify(words: &mut Words<'_>, globals: &mut Globals) -> Option<VerifyArgs> {
    let mut action: Option<String> = None;
    let mut token_env = None;
    let mut json = false;
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        if globals.take(word, words)? {
            continue;
        }
        if word.starts_with('-') {
            match long_name(word)? {
                "token-env" => once(
                    &mut token_env,
                    parse_env_name(words.value(word, "--token-env")?).ok()?,
                )?,
                "json" => flag(&mut json, word)?,
                // --token-stdin, help, anything else: clap's.
                _ => return None,
            }
        } else {
            once(&mut action, word.to_owned())?;
        }
    }
    Some(VerifyArgs {
        action: action.filter(|a| !a.is_empty())?,
        token_stdin: false,
        token_env,
        json,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use proptest::prelude::*;

    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// What clap makes of the same line, compared through `Debug` (the structs hold a glob
    /// pattern and paths, all of which print what they hold).
    fn same_as_clap(line: &[OsString]) -> Result<(), TestCaseError> {
        if let Some(fast) = parse(line) {
            let clap = Cli::try_parse_from(line);
            prop_assert!(clap.is_ok(), "{line:?}: fast path accepted, clap refused");
            prop_assert_eq!(
                format!("{fast:?}"),
                format!("{:?}", clap.expect("clap parsed it")),
                "{:?}",
                line
            );
        }
        Ok(())
    }

    #[test]
    fn the_usual_lines_take_the_fast_path_and_agree_with_clap() {
        for line in [
            &[
                "lease",
                "run",
                "--scope",
                "read:articles,write:draft",
                "--",
                "true",
            ][..],
            &[
                "lease", "run", "--scope", "a:b", "--ttl", "300", "--", "sh", "-c", "x",
            ],
            &[
                "lease",
                "--state-dir",
                "/s",
                "run",
                "--scope=a",
                "--mask",
                "--",
                "make",
            ],
            &[
                "lease", "-v", "run", "--scope", "a", "--scrub", "*_TOKEN", "--", "x",
            ],
            &[
                "lease",
                "run",
                "--scope",
                "a",
                "--on-expiry",
                "term",
                "--grace",
                "5s",
                "--",
                "x",
            ],
            &[
                "lease",
                "run",
                "--scope",
                "a",
                "--receipt",
                "r.json",
                "--env",
                "DEPLOY_TOKEN",
                "--",
                "x",
                "--",
                "-v",
            ],
            &["lease", "verify", "write:draft"],
            &[
                "lease",
                "verify",
                "deploy:staging",
                "--token-env",
                "DEPLOY_TOKEN",
                "--json",
            ],
            &[
                "lease",
                "--config=/c",
                "verify",
                "--json",
                "a:b",
                "--state-dir",
                "/s",
            ],
        ] {
            let line = args(line);
            assert!(
                parse(&line).is_some(),
                "{line:?} did not take the fast path"
            );
            same_as_clap(&line).expect("the same as clap");
        }
    }

    #[test]
    fn everything_else_is_left_to_clap() {
        for line in [
            &["lease"][..],
            &["lease", "run", "--scope", "a"],
            &["lease", "run", "--scope", "a", "--"],
            &["lease", "run", "--scope", "a", "true"],
            &["lease", "run", "--help"],
            &["lease", "run", "-h", "--", "x"],
            &[
                "lease", "run", "--scope", "a", "--ttl", "1", "--ttl", "2", "--", "x",
            ],
            &[
                "lease", "run", "--scope", "a", "--mask", "--mask", "--", "x",
            ],
            &["lease", "run", "--scope", "a", "--mask=yes", "--", "x"],
            &["lease", "run", "--scope", "-a", "--", "x"],
            &["lease", "run", "--scope", "", "--", "x"],
            &["lease", "run", "--scope", "a", "--ttl", "0", "--", "x"],
            &["lease", "run", "--scope", "a", "--uses", "0", "--", "x"],
            &["lease", "run", "--scope", "a", "--uses", "+1", "--", "x"],
            &["lease", "run", "--scope", "a", "--print-env"],
            &[
                "lease",
                "run",
                "--scope",
                "a",
                "--clean-env",
                "--keep",
                "PATH",
                "--",
                "x",
            ],
            &["lease", "run", "--scop", "a", "--", "x"],
            &["lease", "-vv", "run", "--scope", "a", "--", "x"],
            &["lease", "verify"],
            &["lease", "verify", "a", "b"],
            &["lease", "verify", "a", "--token-stdin"],
            &["lease", "verify", "--", "a"],
            &["lease", "issue", "--scope", "a"],
        ] {
            assert!(parse(&args(line)).is_none(), "{line:?} took the fast path");
        }
    }

    /// Words a command line of `run` or `verify` is made of, good and bad.
    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "run",
            "verify",
            "issue",
            "--",
            "-",
            "",
            "-v",
            "-vv",
            "-h",
            "--help",
            "--verbose",
            "--state-dir",
            "--state-dir=/s",
            "--state-dir=",
            "/s",
            "--config",
            "--config=c",
            "--broker",
            "--broker=unix:/b",
            "unix:/b",
            "--scope",
            "--scope=a,b",
            "a",
            "a:b",
            "a b",
            "--ttl",
            "--ttl=5m",
            "5m",
            "0",
            "-1",
            "1h",
            "--uses",
            "3",
            "--profile",
            "p",
            "--no-parent",
            "--no-parent=1",
            "--env",
            "TOK",
            "LEASE_ID",
            "--on-expiry",
            "term",
            "bogus",
            "--grace",
            "2s",
            "--scrub",
            "*_TOKEN",
            "[",
            "--clean-env",
            "--keep",
            "PATH",
            "--print-env",
            "--mask",
            "--receipt",
            "r.json",
            "--json",
            "--token-env",
            "--token-stdin",
            "--bogus",
            "x",
            "sh",
            "-c",
        ])
    }

    /// An option of `run` (or a global one) with a value it takes, as one word or two.
    fn run_option() -> impl Strategy<Value = Vec<String>> {
        let with_value = prop::sample::select(vec![
            ("--scope", "a"),
            ("--scope", "read:articles,write:draft"),
            ("--scope", "x=3"),
            ("--ttl", "5m"),
            ("--ttl", "300"),
            ("--uses", "2"),
            ("--profile", "ci"),
            ("--env", "DEPLOY_TOKEN"),
            ("--on-expiry", "term"),
            ("--on-expiry", "kill"),
            ("--grace", "2s"),
            ("--scrub", "*_TOKEN"),
            ("--scrub", "AWS_*"),
            ("--receipt", "run.json"),
            ("--state-dir", "/s"),
            ("--config", "/c"),
            ("--broker", "unix:/b"),
        ]);
        let flag = prop::sample::select(vec![
            "--mask",
            "--clean-env",
            "--no-parent",
            "-v",
            "--verbose",
        ]);
        prop_oneof![
            (with_value, any::<bool>()).prop_map(|((name, value), joined)| if joined {
                vec![format!("{name}={value}")]
            } else {
                vec![name.to_owned(), value.to_owned()]
            }),
            flag.prop_map(|f| vec![f.to_owned()]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn a_run_line_of_real_options_the_fast_path_accepts_clap_parses_the_same(
            options in prop::collection::vec(run_option(), 1..7),
            command in prop::collection::vec(word(), 1..3),
        ) {
            let mut line = vec![OsString::from("lease"), OsString::from("run")];
            line.extend(options.into_iter().flatten().map(OsString::from));
            line.push("--".into());
            line.extend(command.iter().map(OsString::from));
            same_as_clap(&line)?;
        }

        #[test]
        fn a_verify_line_the_fast_path_accepts_clap_parses_the_same(
            before in prop::collection::vec(word(), 0..3),
            after in prop::collection::vec(prop::sample::select(vec![
                "--json", "--token-env", "--token-env=DEPLOY_TOKEN", "DEPLOY_TOKEN", "-v",
                "--state-dir", "/s", "--broker=unix:/b", "write:draft", "a:b",
            ]), 0..6),
        ) {
            let mut line = vec![OsString::from("lease")];
            line.extend(before.iter().map(OsString::from));
            line.push("verify".into());
            line.extend(after.iter().map(OsString::from));
            same_as_clap(&line)?;
        }

        #[test]
        fn whatever_the_fast_path_accepts_clap_parses_the_same(
            words in prop::collection::vec(word(), 0..12),
        ) {
            let mut line = vec![OsString::from("lease")];
            line.extend(words.iter().map(OsString::from));
            same_as_clap(&line)?;
        }

        #[test]
        fn a_run_line_the_fast_path_accepts_clap_parses_the_same(
            words in prop::collection::vec(word(), 0..10),
            command in prop::collection::vec(word(), 0..3),
        ) {
            let mut line = vec![OsString::from("lease"), OsString::from("run")];
            line.extend(words.iter().map(OsString::from));
            line.push("--".into());
            line.extend(command.iter().map(OsString::from));
            same_as_clap(&line)?;
        }
    }
}
