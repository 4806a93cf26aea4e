//! `lease log`: the audit trail, newest last.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

use super::Setup;
use crate::audit::Event;
use crate::exit::Exit;
use crate::store::Open;

/// Which events `lease log` shows.
#[derive(Debug)]
pub enum About<'a> {
    /// Every one.
    All,
    /// Those of a lease, or of a run (`--id`).
    Id(&'a str),
    /// Those of a lease and of the leases nested in it (a token holder's own, on a broker).
    Tree(&'a str),
}

pub fn log(setup: &Setup, about: About<'_>, since: Option<Duration>, json: bool) -> Result<Exit> {
    let store = setup.store(Open::ExistingOnly)?;
    let cutoff = since.and_then(|d| SystemTime::now().checked_sub(d));
    let mut tree = match about {
        About::Tree(root) => Some(crate::audit::Tree::new(root)),
        About::All | About::Id(_) => None,
    };
    let events = store.audit().read()?.into_iter().filter(|event| {
        let about = match (&about, &mut tree) {
            (About::Id(id), _) => {
                event.lease.as_deref() == Some(*id) || event.run.as_deref() == Some(*id)
            }
            (_, Some(tree)) => tree.holds(event),
            _ => true,
        };
        let recent = cutoff.is_none_or(|cutoff| {
            humantime::parse_rfc3339(&event.time).is_ok_and(|time| time >= cutoff)
        });
        about && recent
    });
    let mut out = super::console::Out;
    for event in events {
        let line = if json {
            serde_json::to_string(&event).context("encoding an event")?
        } else {
            human(&event)
        };
        writeln!(out, "{line}").context("writing to standard output")?;
    }
    Ok(Exit::Success)
}

/// One line for people: time, event, lease, then whatever else the event says.
fn human(event: &Event) -> String {
    let mut line = format!(
        "{}  {:<10}  {}",
        event.time,
        event.event.as_str(),
        event.lease.as_deref().unwrap_or("-")
    );
    // One event, one line: a value with a control character in it (a command named with a
    // line break, say) is shown escaped, and cannot pass for another event.
    let mut field = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            line.push_str(&format!(" {name}={}", value.escape_debug()));
        }
    };
    field("action", event.action.clone());
    field("reason", event.reason.clone());
    // A request decided for a web server or proxied to an upstream: what it was, and (proxied)
    // what came of it.
    field("upstream", event.upstream.clone());
    field("method", event.method.clone());
    field("path", event.path.clone());
    field("status", event.status.map(|s| s.to_string()));
    field("up", event.bytes_up.map(|b| format!("{b}B")));
    field("down", event.bytes_down.map(|b| format!("{b}B")));
    field("scope", event.scope.as_ref().map(|s| s.join(",")));
    field("expires", event.expires_at.clone());
    field("exit", event.exit_code.map(|c| c.to_string()));
    field("signal", event.signal.map(|s| s.to_string()));
    field("duration", event.duration_ms.map(|ms| format!("{ms}ms")));
    field("parent", event.parent.as_deref().map(str::to_owned));
    field("run", event.run.as_deref().map(str::to_owned));
    field("pid", event.pid.map(|p| p.to_string()));
    field(
        "command",
        event.command.as_ref().map(|c| match event.argc {
            Some(argc) => format!("{c}({argc} args)"),
            None => c.clone(),
        }),
    );
    line
}
