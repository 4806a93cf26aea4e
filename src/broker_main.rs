//! `lease-broker`: the broker's binary, started by `lease serve` (which resolves the state
//! dir and the config and passes them on). It holds the async HTTP stack, so that `lease`
//! itself never loads it.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use lease::broker::{ServeRequest, serve};
use lease::endpoint::Listen;

fn main() {
    lease::report_panics_in_one_line("lease serve");
    // `lease` starts this binary as the TLS side of its connection to an https:// broker.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [flag, authority] = &args[..]
        && flag == "--tls-relay"
    {
        lease::tls_relay::relay(&authority.to_string_lossy()).terminate();
    }
    let exit = match parse(args.into_iter()) {
        Ok(request) => match serve(request) {
            Ok(exit) => exit,
            Err(err) => {
                eprintln!(
                    "{}",
                    lease::one_line(&format!("lease: cannot serve: {err:#}"))
                );
                lease::exit::Exit::Failure
            }
        },
        Err(err) => {
            eprintln!("lease-broker: {err}; start the broker with `lease serve`");
            lease::exit::Exit::Failure
        }
    };
    exit.terminate()
}

/// The arguments `lease serve` passes: `--state-dir DIR [--config FILE] [--listen ADDR]...
/// [--insecure-http]`.
fn parse(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<ServeRequest, String> {
    let mut state_dir = None;
    let mut config = None;
    let mut listen = Vec::new();
    let mut insecure_http = false;
    let mut store = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.to_str() {
            Some("--state-dir") => state_dir = Some(PathBuf::from(value("--state-dir")?)),
            Some("--config") => config = Some(PathBuf::from(value("--config")?)),
            Some("--listen") => {
                let text = value("--listen")?;
                let text = text.to_str().ok_or("--listen: not UTF-8")?;
                listen.push(Listen::parse(text).map_err(|err| format!("--listen: {err:#}"))?);
            }
            Some("--insecure-http") => insecure_http = true,
            Some("--store") => {
                let text = value("--store")?;
                let text = text.to_str().ok_or("--store: not UTF-8")?;
                let url = lease::store::etcd::Url::parse(text);
                store = Some(url.map_err(|err| format!("--store: {err:#}"))?);
            }
            _ => return Err(format!("unexpected argument {:?}", arg.to_string_lossy())),
        }
    }
    Ok(ServeRequest {
        state_dir: state_dir.ok_or("--state-dir is required")?,
        config,
        listen,
        insecure_http,
        store,
    })
}
