//! Completions and man pages, generated from the command-line definition so that they never
//! drift from it. lease(1) adds what the definition cannot say (exit status, the environment,
//! the files), and every subcommand has its own page, lease-SUBCOMMAND(1). Nothing clap-made
//! leaves this module but bytes.

use std::io::Write;

use crate::request::Shell;

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut command = super::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, "lease", &mut out);
    out
}

/// The page name of lease (`None`) or of one of its subcommands: `lease`, `lease-run`.
pub fn page_name(subcommand: Option<&str>) -> String {
    match subcommand {
        Some(sub) => format!("lease-{sub}"),
        None => "lease".to_owned(),
    }
}

/// Every page, lease(1) first, each as (name, roff).
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let mut command = super::command().disable_help_subcommand(true);
    command.build();
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let names: Vec<String> = subcommands
        .iter()
        .map(|s| page_name(Some(s.get_name())))
        .collect();
    let mut pages = vec![("lease".to_owned(), lease_page(command, &names))];
    for (sub, name) in subcommands.into_iter().zip(names) {
        let mut roff = Vec::new();
        // Rendering into memory cannot fail.
        let _ = clap_mangen::Man::new(sub).render(&mut roff);
        roff.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBlease\\fR(1)\n");
        pages.push((name, roff));
    }
    pages
}

/// lease(1): the generated sections, with EXIT STATUS, ENVIRONMENT and FILES before the
/// examples, and SEE ALSO naming every subcommand's page.
fn lease_page(command: clap::Command, subpages: &[String]) -> Vec<u8> {
    let man = clap_mangen::Man::new(command);
    let mut roff = Vec::new();
    let see_also: Vec<String> = subpages
        .iter()
        .map(|name| format!("\\fB{}\\fR(1)", name.replace('-', "\\-")))
        .collect();
    // Rendering into memory cannot fail.
    let _ = (|| -> std::io::Result<()> {
        man.render_title(&mut roff)?;
        man.render_name_section(&mut roff)?;
        man.render_synopsis_section(&mut roff)?;
        man.render_description_section(&mut roff)?;
        man.render_options_section(&mut roff)?;
        man.render_subcommands_section(&mut roff)?;
        roff.write_all(EXIT_STATUS.as_bytes())?;
        roff.write_all(ENVIRONMENT.as_bytes())?;
        roff.write_all(FILES.as_bytes())?;
        man.render_extra_section(&mut roff)?;
        writeln!(roff, ".SH \"SEE ALSO\"\n{}", see_also.join(",\n"))?;
        man.render_version_section(&mut roff)
    })();
    roff
}

/// The exit statuses of src/exit.rs, as the README's table gives them.
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success; for \fBverify\fR, the action is granted.
.TP
\fB1\fR
\fBverify\fR: denied (one line on stderr names the reason).
\fBstatus\fR: the lease is no longer valid.
\fBrevoke\fR: an unknown id. \fBrenew\fR: refused. \fBsuggest\fR: an unknown id.
.TP
\fB2\fR
A subcommand other than \fBrun\fR failed or was used wrongly; \fBverify\fR cannot decide
(no token, an unreadable store).
.TP
\fB124\fR
\fBrun \-\-on\-expiry term|kill\fR ended the command when its lease expired.
.TP
\fB125\fR
\fBrun\fR failed before running the command, including every bad argument or policy refusal;
or revoking failed after the command succeeded.
.TP
\fB126\fR
\fBrun\fR: the command exists but cannot be executed.
.TP
\fB127\fR
\fBrun\fR: the command was not found.
.TP
\fIN\fR
\fBrun\fR: the command exited with \fIN\fR.
.TP
\fB128\fR+\fIN\fR
\fBrun\fR: the command died of signal \fIN\fR; lease revokes its lease, then dies of the same
signal.
"#;

/// The variables lease reads, and those `lease run` gives the command.
const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBLEASE_STATE_DIR\fR
The store, as \fB\-\-state\-dir\fR. \fBlease run\fR sets it in the command's environment.
.TP
\fBLEASE_CONFIG\fR
The config file, as \fB\-\-config\fR; it must exist. \fBlease run\fR sets it, as an absolute
path, in the command's environment when the config was chosen this way or with \fB\-\-config\fR.
.TP
\fBLEASE_BROKER\fR
The broker to go through, as \fB\-\-broker\fR: \fIunix:/path\fR, \fIhttp://HOST:PORT\fR or
\fIhttps://HOST:PORT\fR. Every subcommand then asks the broker (\fBlease serve\fR), which alone
reads its store and policy; \fBlease run\fR sets it for the command instead of
\fBLEASE_STATE_DIR\fR.
.TP
\fBLEASE_BROKER_CA\fR
A PEM file of the CA certificates an \fIhttps://\fR broker's certificate must chain to
(default: the system's \fI/etc/ssl/certs/ca-certificates.crt\fR).
.TP
\fBLEASE_TOKEN\fR
The token (the secret). \fBlease run\fR puts it here for the command (or in the variable
named by \fB\-\-env\fR, a profile's \fBenv\fR or the config's \fBtoken_env\fR);
\fBverify\fR, \fBstatus\fR and \fBrenew\fR read it from here unless given
\fB\-\-token\-env\fR or \fB\-\-token\-stdin\fR; \fBrun\fR and \fBissue\fR started with a
live lease's token here mint a nested lease.
.TP
\fBLEASE_TOKEN_ENV\fR
Set by \fBlease run\fR for the command: the name of the variable that holds its token.
Without \fB\-\-token\-env\fR, \fBverify\fR, \fBstatus\fR, \fBrenew\fR, \fBrevoke \-\-self\fR
and nested \fBrun\fR and \fBissue\fR look for the token there first.
.TP
\fBLEASE_ID\fR, \fBLEASE_SCOPE\fR, \fBLEASE_EXPIRES_AT\fR
Set by \fBlease run\fR for the command: the lease's id (not secret), its scopes,
comma-joined, and its expiry (RFC 3339, UTC).
.TP
\fBXDG_STATE_HOME\fR, \fBXDG_CONFIG_HOME\fR, \fBHOME\fR
Where the default store and config file are.
"#;

/// Where lease keeps what it keeps.
const FILES: &str = r#".SH FILES
.TP
\fI$XDG_CONFIG_HOME/lease/config.toml\fR (\fI~/.config/lease/config.toml\fR)
The config file, if it exists: limits, allowed scopes, profiles.
.TP
\fI$XDG_STATE_HOME/lease\fR (\fI~/.local/state/lease\fR)
The store (mode 0700), unless \fB\-\-state\-dir\fR or \fBLEASE_STATE_DIR\fR names another.
.TP
\fIleases/ID.toml\fR
In the store: one record per lease (mode 0600), holding the token's SHA\-256, never the token.
.TP
\fIaudit.jsonl\fR, \fIaudit.jsonl.1\fR
In the store: the audit trail, one JSON event per line, and its rotated predecessor.
.TP
\fIbroker.sock\fR
In the store: where \fBlease serve\fR listens by default (mode 0600).
"#;
