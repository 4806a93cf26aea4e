//! What lease gives the shell and the manual: completions for bash, zsh and fish, and the man
//! pages (lease(1) and one per subcommand).

use crate::harness::Sandbox;

#[test]
fn completions_and_man_page_are_generated_and_bash_offers_the_subcommands() {
    let sandbox = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = sandbox.lease(["completions", shell]).run().success();
        assert!(out.stdout.contains("lease"), "{shell}");
    }
    sandbox
        .lease(["completions", "tcsh"])
        .run()
        .code_is(2)
        .one_error_line();
    let man = sandbox.lease(["man"]).run().success().stdout;
    assert!(
        man.starts_with(".ie") || man.contains(".TH lease 1"),
        "{man}"
    );
    let script = sandbox.path("lease.bash");
    std::fs::write(
        &script,
        sandbox
            .lease(["completions", "bash"])
            .run()
            .success()
            .stdout,
    )
    .unwrap();
    // As bash calls a completion function: the words typed (the last one being completed),
    // the word being completed, the one before; what it offers, one per line.
    let offered = |words: &str, before: &str| {
        let count = words.split(' ').count();
        let probe = format!(
            "source {}; COMP_WORDS=({words} \"\"); COMP_CWORD={count}; _lease lease \"\" {before}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        sandbox
            .command("bash")
            .arg("-c")
            .arg(probe)
            .run()
            .success()
            .stdout
    };
    let subcommands = offered("lease", "lease");
    for sub in [
        "run", "verify", "issue", "list", "revoke", "gc", "renew", "log", "suggest", "status",
    ] {
        assert!(
            subcommands.lines().any(|l| l == sub),
            "{sub} not offered: {subcommands}"
        );
    }
    // A value that has a fixed set of words is completed with them.
    assert_eq!(
        offered("lease run --on-expiry", "--on-expiry"),
        "keep\nterm\nkill\n"
    );
}

#[test]
fn every_subcommand_has_a_man_page_and_lease_1_names_only_pages_that_exist() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("man1");
    let out = sandbox.lease(["man", "--dir"]).arg(&dir).run().success();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let subcommands = [
        "completions",
        "gc",
        "issue",
        "list",
        "log",
        "man",
        "renew",
        "revoke",
        "run",
        "serve",
        "status",
        "suggest",
        "verify",
    ];
    let mut expected: Vec<String> = subcommands.iter().map(|s| format!("lease-{s}.1")).collect();
    expected.push("lease.1".to_owned());
    expected.sort();
    assert_eq!(written, expected);

    let have_man = sandbox.command("man").arg("--version").run().code() == Some(0);
    for (page, args) in std::iter::once(("lease".to_owned(), vec![]))
        .chain(subcommands.iter().map(|s| (format!("lease-{s}"), vec![*s])))
    {
        let file = dir.join(format!("{page}.1"));
        let roff = std::fs::read_to_string(&file).unwrap();
        let printed = sandbox
            .lease([&["man"][..], &args].concat())
            .run()
            .success();
        assert_eq!(printed.stdout, roff, "lease man {args:?} prints {page}.1");
        let title = format!(".TH {page} 1 ");
        assert!(
            roff.contains(&title) && roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"),
            "{page}: {roff}"
        );
        if have_man {
            let rendered = sandbox
                .command("man")
                .arg("--warnings")
                .arg("-l")
                .arg(&file)
                .env("MANWIDTH", "80")
                .run()
                .success();
            assert_eq!(rendered.stderr, "", "{page} renders without warnings");
            assert!(
                rendered.stdout.contains("SYNOPSIS"),
                "{page}: {rendered:#?}"
            );
        }
    }

    let lease = std::fs::read_to_string(dir.join("lease.1")).unwrap();
    let section = |name: &str| {
        let start = lease
            .find(&format!(".SH {name}\n"))
            .unwrap_or_else(|| panic!("lease(1) has no {name} section"));
        let body = &lease[start + name.len() + 5..];
        body[..body.find(".SH ").unwrap_or(body.len())].to_owned()
    };
    let exit_status = section("\"EXIT STATUS\"");
    for code in ["0", "1", "2", "124", "125", "126", "127", "128"] {
        assert!(
            exit_status.contains(&format!("\\fB{code}\\fR")),
            "{code}: {exit_status}"
        );
    }
    let environment = section("ENVIRONMENT");
    for name in [
        "LEASE_TOKEN",
        "LEASE_STATE_DIR",
        "LEASE_CONFIG",
        "LEASE_ID",
        "LEASE_SCOPE",
    ] {
        assert!(
            environment.contains(&format!("\\fB{name}\\fR")),
            "{name}: {environment}"
        );
    }
    let files = section("FILES");
    for path in ["config.toml", "leases/ID.toml", "audit.jsonl"] {
        assert!(files.contains(path), "{path}: {files}");
    }
    // Every page lease(1) refers to, in SEE ALSO and SUBCOMMANDS alike, is one that exists.
    let refers = regex::Regex::new(r"(lease(?:\\-[a-z]+)*)(?:\\fR)?\((\d)\)").unwrap();
    let see_also = section("\"SEE ALSO\"");
    let named: Vec<String> = refers
        .captures_iter(&see_also)
        .map(|c| format!("{}.{}", c[1].replace("\\-", "-"), &c[2]))
        .collect();
    let mut subpages = expected.clone();
    subpages.retain(|p| p != "lease.1");
    let mut sorted = named.clone();
    sorted.sort();
    assert_eq!(sorted, subpages, "SEE ALSO names every subcommand's page");
    for reference in refers.captures_iter(&lease) {
        let page = format!("{}.{}", reference[1].replace("\\-", "-"), &reference[2]);
        assert!(
            expected.contains(&page),
            "lease(1) refers to {page}, which does not exist"
        );
    }
}
