//! `lease serve`: hands over to `lease-broker`, the binary next to this one that holds the
//! async HTTP stack, so that the local subcommands never load (or relocate) it at start.

use std::os::unix::process::CommandExt;

use anyhow::{Context as _, Result, anyhow};

use super::Setup;
use crate::endpoint::Listen;
use crate::exit::Exit;

/// The broker's binary, installed next to `lease`.
pub const BROKER_BINARY: &str = "lease-broker";

/// Replaces this process with the broker, given the resolved state dir and config.
pub fn serve(
    setup: &Setup,
    listen: &[Listen],
    insecure_http: bool,
    store: Option<&crate::store::etcd::Url>,
) -> Result<Exit> {
    let exe = std::env::current_exe().context("cannot find lease's own binary")?;
    let broker = exe.with_file_name(BROKER_BINARY);
    let mut command = std::process::Command::new(&broker);
    command.arg("--state-dir").arg(setup.state_dir()?);
    if let Some(path) = &setup.config.path {
        command.arg("--config").arg(path);
    }
    for address in listen {
        command.arg("--listen").arg(address.to_string());
    }
    if insecure_http {
        command.arg("--insecure-http");
    }
    if let Some(url) = store {
        command.arg("--store").arg(url.to_string());
    }
    let err = command.exec();
    Err(anyhow!(
        "cannot start the broker: {}: {err}; install {BROKER_BINARY} next to lease (install.sh does)",
        broker.display()
    ))
}
