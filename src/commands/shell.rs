//! `lease completions SHELL` and `lease man`: printing or writing what `cli::docs` generates
//! from the command-line definition.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};

use crate::cli::docs;
use crate::exit::Exit;
use crate::request::{ManPage, Shell};

pub fn completions(shell: Shell) -> Result<Exit> {
    let out = docs::completions(shell);
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing to standard output")?;
    Ok(Exit::Success)
}

pub fn man(page: &ManPage) -> Result<Exit> {
    match page {
        ManPage::Print(subcommand) => {
            let (_, roff) = docs::pages()
                .into_iter()
                .find(|(name, _)| *name == docs::page_name(subcommand.as_deref()))
                .ok_or_else(|| anyhow!("no man page for that subcommand"))?;
            std::io::stdout()
                .lock()
                .write_all(&roff)
                .context("writing to standard output")?;
        }
        ManPage::WriteAll(dir) => write_all(dir)?,
    }
    Ok(Exit::Success)
}

/// Writes every page into `dir`, each replaced whole (a temporary file renamed over it), so a
/// reinstall never leaves half a page behind.
fn write_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, roff) in docs::pages() {
        let path = dir.join(format!("{name}.1"));
        let temporary = dir.join(format!(".{name}.1.{}", std::process::id()));
        std::fs::write(&temporary, roff)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temporary);
            })
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
