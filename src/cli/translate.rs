//! The parsed clap structs turned into requests: every check the command line can make alone
//! (scopes and budgets, token-shaped input, that a command follows `--`) is made here, once.

use anyhow::{Result, bail};

use super::args::{MintArgs, Shell, Sub, TokenArgs};
use super::values::{lease_id_arg, not_a_token, not_a_whole_token, store_arg};
use crate::config::Profile;
use crate::policy::Asked;
use crate::request::{
    self, Command, EnvRequest, IssueRequest, ManPage, RenewRequest, RevokeTarget, RunMode,
    RunRequest, TokenSource, VerifyRequest,
};
use crate::scope::{self, Action};

impl TokenArgs {
    fn source(self) -> TokenSource {
        if self.token_stdin {
            TokenSource::Stdin
        } else {
            TokenSource::Env(self.token_env)
        }
    }
}

pub(super) fn validate(sub: Sub) -> Result<Command> {
    Ok(match sub {
        Sub::Run(args) => {
            if let Some(program) = args.command.first() {
                not_a_whole_token(
                    &program.to_string_lossy(),
                    "a command",
                    "put the command to run after `--`; the token reaches it in $LEASE_TOKEN",
                )?;
            }
            if let Some(receipt) = &args.receipt {
                not_a_whole_token(
                    &receipt.to_string_lossy(),
                    "a file name",
                    "--receipt takes the path of the JSON file to write, e.g. --receipt run.json",
                )?;
            }
            let mut command = args.command.into_iter();
            let mode = match command.next() {
                _ if args.print_env => RunMode::PrintEnv,
                Some(program) => RunMode::Exec {
                    program,
                    args: command.collect(),
                },
                None => bail!("no command given: put it after `--`"),
            };
            let mut asked = asked(args.mint)?;
            asked.flags.env = args.env;
            asked.flags.on_expiry = args.on_expiry;
            asked.flags.grace = args.grace;
            Command::Run(RunRequest {
                asked,
                mode,
                env: EnvRequest {
                    scrub: args.scrub,
                    clean: args.clean_env,
                    keep: args.keep,
                },
                mask: args.mask,
                receipt: args.receipt,
                upstreams: args.upstream,
            })
        }
        Sub::Verify(args) => Command::Verify(VerifyRequest {
            action: {
                not_a_token(
                    &args.action,
                    "an action",
                    "the token goes in $LEASE_TOKEN, --token-env NAME or --token-stdin; ACTION is what to check, e.g. write:draft",
                )?;
                Action::parse(&args.action)?
            },
            source: token_source(args.token_stdin, args.token_env),
            json: args.json,
        }),
        Sub::Issue(args) => Command::Issue(IssueRequest {
            asked: asked(args.mint)?,
            json: args.json,
        }),
        Sub::Log(args) => Command::Log {
            id: args.id.map(lease_id_arg).transpose()?,
            since: args.since,
            json: args.json,
        },
        Sub::Suggest(args) => Command::Suggest {
            id: lease_id_arg(args.id)?,
            json: args.json,
        },
        Sub::Status(args) => Command::Status {
            source: args.token.source(),
            json: args.json,
        },
        Sub::Completions(args) => Command::Completions(match args.shell {
            Shell::Bash => request::Shell::Bash,
            Shell::Zsh => request::Shell::Zsh,
            Shell::Fish => request::Shell::Fish,
        }),
        Sub::Man(args) => Command::Man(match args.dir {
            Some(dir) => {
                not_a_whole_token(
                    &dir.to_string_lossy(),
                    "a directory",
                    "--dir takes the directory to write the pages in",
                )?;
                ManPage::WriteAll(dir)
            }
            None => ManPage::Print(args.subcommand),
        }),
        Sub::Renew(args) => Command::Renew(RenewRequest {
            ttl: args.ttl,
            source: args.token.source(),
        }),
        Sub::List(args) => Command::List {
            all: args.all,
            json: args.json,
        },
        Sub::Revoke(args) if args.all => Command::Revoke(RevokeTarget::All),
        Sub::Revoke(args) if args.own => Command::Revoke(RevokeTarget::Own(token_source(
            args.token_stdin,
            args.token_env,
        ))),
        Sub::Revoke(args) => Command::Revoke(RevokeTarget::Ids(
            args.ids
                .into_iter()
                .map(lease_id_arg)
                .collect::<Result<_>>()?,
        )),
        Sub::Gc => Command::Gc,
        Sub::Serve(args) => Command::Serve {
            listen: args.listen,
            insecure_http: args.insecure_http,
            store: args.store.as_deref().map(store_arg).transpose()?,
        },
    })
}

/// Where `--token-stdin` and `--token-env NAME` say the token is.
fn token_source(stdin: bool, env: Option<String>) -> TokenSource {
    if stdin {
        TokenSource::Stdin
    } else {
        TokenSource::Env(env)
    }
}

fn asked(args: MintArgs) -> Result<Asked> {
    for text in args.scope.iter().chain(&args.profile) {
        not_a_token(
            text,
            "a scope or a profile",
            "pass what the lease may do, e.g. --scope read:articles",
        )?;
    }
    let scope = if args.scope.is_empty() {
        None
    } else {
        Some(scope::parse_grants(&args.scope)?)
    };
    Ok(Asked {
        profile: args.profile,
        flags: Profile {
            scope,
            ttl: args.ttl,
            uses: args.uses,
            ..Profile::default()
        },
        no_parent: args.no_parent,
    })
}
