//! `lease completions SHELL` and `lease man`: generated from the command-line definition, so
//! they never drift from it.

use std::io::Write;

use anyhow::{Context as _, Result};

use crate::cli::{self, Shell};
use crate::exit::Exit;

pub fn completions(shell: Shell) -> Result<Exit> {
    let mut command = cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, "lease", &mut out);
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing to standard output")?;
    Ok(Exit::Success)
}

pub fn man() -> Result<Exit> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cli::command())
        .render(&mut out)
        .context("rendering the man page")?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing to standard output")?;
    Ok(Exit::Success)
}
