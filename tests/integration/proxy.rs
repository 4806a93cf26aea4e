//! Issue 12: the broker proxies a run's requests to a real upstream and adds the strong key
//! itself. The upstream is a real nginx that serves only requests carrying the key.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::broker::{Broker, NginxServer, bearer, curl, free_port};
use crate::harness::{Lines, Sandbox, wait_for_exit, wait_for_file};

/// The strong key: what only the broker and the upstream may see.
const KEY: &str = "sk-live-7Hq2vX9pLm4Rt8Wn";

/// nginx serving `site/` and an echo of the request's `Authorization`, each only to a request
/// that carries the key; every request it sees is in `access.log` with its `Authorization`.
struct Upstream {
    dir: PathBuf,
    port: u16,
    _server: NginxServer,
    /// A socket nginx's `/files/late` waits on, which never answers.
    silent: std::os::unix::net::UnixListener,
}

impl Upstream {
    fn start(sandbox: &Sandbox) -> Upstream {
        Upstream::start_with(sandbox, None)
    }

    /// The same, speaking TLS with `tls` (a certificate and its key) if given.
    fn start_with(
        sandbox: &Sandbox,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Upstream {
        let listen_tls = match tls {
            Some((cert, key)) => format!(
                " ssl; ssl_certificate {}; ssl_certificate_key {}",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let dir = sandbox.path("upstream");
        fs::create_dir_all(dir.join("site/files")).expect("site");
        fs::create_dir_all(dir.join("site/private")).expect("site");
        fs::create_dir_all(dir.join("received")).expect("uploads");
        fs::write(dir.join("site/files/hello.txt"), "hello from upstream\n").expect("file");
        fs::write(dir.join("site/private/secret.txt"), "private\n").expect("file");
        fs::create_dir_all(dir.join("site/files/slow")).expect("site");
        fs::write(dir.join("site/files/slow/big.bin"), vec![b'x'; 1 << 20]).expect("file");
        let port = free_port();
        let http = format!(
            "  log_format seen '$request_method $uri auth=[$http_authorization] key=[$http_x_api_key] other=[$http_x_anything] cookie=[$http_cookie] second=[$http_x_second] line=[$request]';
  map $http_authorization $keyed {{ \"Bearer {KEY}\" 1; default 0; }}
  server {{
    listen 127.0.0.1:{port}{listen_tls};
    access_log {d}/access.log seen;
    root {d}/site;
    location / {{
      if ($keyed = 0) {{ return 401; }}
    }}
    location /upload/ {{
      if ($keyed = 0) {{ return 401; }}
      root {d}/received;
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 0;
    }}
    location = /moved {{
      if ($keyed = 0) {{ return 401; }}
      add_header Set-Cookie \"session=upstream; Path=/; Domain=127.0.0.1\";
      return 302 http://127.0.0.1:{port}/files/hello.txt;
    }}
    location = /echo {{
      if ($keyed = 0) {{ return 401; }}
      add_header X-Echo $http_authorization;
      return 200 \"you sent: $http_authorization\\n\";
    }}
    # An answer that never comes: nginx waits on a socket nobody answers.
    location = /files/late {{
      if ($keyed = 0) {{ return 401; }}
      proxy_pass http://unix:{d}/silent.sock;
      proxy_read_timeout 60s;
    }}
    # A download at 64 KiB/s, to be in flight when its lease ends.
    location /files/slow/ {{
      if ($keyed = 0) {{ return 401; }}
      limit_rate 64k;
    }}
    # Echoes said to be compressed (though asked for identity): once, and after identity.
    location = /files/gzip {{
      if ($keyed = 0) {{ return 401; }}
      add_header Content-Encoding gzip;
      return 200 \"you sent: $http_authorization\\n\";
    }}
    location = /files/identity-then-gzip {{
      if ($keyed = 0) {{ return 401; }}
      add_header Content-Encoding identity;
      add_header Content-Encoding gzip;
      return 200 \"you sent: $http_authorization\\n\";
    }}
  }}",
            d = dir.display(),
        );
        let silent = std::os::unix::net::UnixListener::bind(dir.join("silent.sock"))
            .expect("a socket that never answers");
        let server = NginxServer::start(dir.clone(), &http);
        Upstream {
            dir,
            port,
            _server: server,
            silent,
        }
    }

    fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

/// The broker's config with upstream `site` on `port`, its key in a private file.
fn config(sandbox: &Sandbox, port: u16) {
    config_with(sandbox, port, "");
}

/// The same, with `extra` lines in `[upstream.site]`.
fn config_with(sandbox: &Sandbox, port: u16, extra: &str) {
    let key = sandbox.path("site.key");
    fs::write(&key, format!("{KEY}\n")).expect("key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    sandbox.write_config(&format!(
        r#"[upstream.site]
url = "http://127.0.0.1:{port}"
secret_file = "{key}"
child_env = {{ base_url = "SITE_URL", token = "SITE_TOKEN" }}
{extra}

[[upstream.site.route]]
method = "GET"
path = "/moved"
action = "read:site"

[[upstream.site.route]]
method = "GET"
path = "/files/**"
action = "read:site"

[[upstream.site.route]]
method = "GET"
path = "/echo"
action = "read:site"

[[upstream.site.route]]
method = "GET"
path = "/private/**"
action = "read:private"

[[upstream.site.route]]
method = "PUT"
path = "/upload/**"
action = "write:site"
"#,
        key = key.display()
    ));
}

/// A sandbox, the nginx upstream and a broker configured with it; `None` (a skip) without
/// nginx.
fn nginx_upstream_and_broker() -> Option<(Sandbox, Upstream, Broker)> {
    nginx_upstream_and_broker_with("")
}

/// The same, with `extra` lines in `[upstream.site]`.
fn nginx_upstream_and_broker_with(extra: &str) -> Option<(Sandbox, Upstream, Broker)> {
    if !nginx_present() {
        return None;
    }
    let sandbox = Sandbox::new();
    let upstream = Upstream::start(&sandbox);
    config_with(&sandbox, upstream.port, extra);
    let broker = Broker::start(&sandbox, &[]);
    Some((sandbox, upstream, broker))
}

/// A private file holding `Authorization: Bearer TOKEN`, for curl's `-H @FILE` (a token never
/// goes on an argv).
fn bearer_file(sandbox: &Sandbox, name: &str, token: &str) -> PathBuf {
    let path = sandbox.path(name);
    fs::write(&path, format!("Authorization: Bearer {token}")).expect("headers");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    path
}

/// Whether nginx is here; a skip otherwise (a failure in CI unless declared).
fn nginx_present() -> bool {
    if Command::new("nginx").arg("-v").output().is_err() {
        crate::harness::skip("no-nginx", "nginx is not installed");
        return false;
    }
    true
}

#[test]
fn the_broker_adds_the_key_and_the_run_never_holds_it() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    // The command, an unmodified curl, finds the upstream and its credential in the variables
    // the upstream's child_env names.
    let script = r#"
        printf '%s' "$SITE_TOKEN" > token
        env > env.txt
        curl -s -o hello.out -w '%{http_code}' -H "Authorization: Bearer $SITE_TOKEN" "$SITE_URL/files/hello.txt" > hello.code
        curl -s -o private.out -w '%{http_code}' -H "Authorization: Bearer $SITE_TOKEN" "$SITE_URL/private/secret.txt" > private.code
        curl -s -o basic.out -w '%{http_code}' -u "x:$SITE_TOKEN" "$SITE_URL/files/hello.txt" > basic.code
        curl -s -o other.out -w '%{http_code}' -H "Authorization: Bearer $SITE_TOKEN" -H "X-Anything: $SITE_TOKEN" -H "Cookie: t=$SITE_TOKEN" "$SITE_URL/files/hello.txt" > other.code
        curl -s -o another.out -w '%{http_code}' -H "Authorization: Bearer $SITE_TOKEN" -H @another.headers "$SITE_URL/files/hello.txt" > another.code
    "#;
    // Another lease's token, as such, percent-encoded and in Basic credentials.
    let another = sandbox.issue("read:other");
    let another_encoded: String = another.bytes().map(|b| format!("%{b:02X}")).collect();
    let another_basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("u:{another}")
        )
    );
    // In a file (curl -H @FILE): a variable holding a token never reaches the command.
    fs::write(
        sandbox.path("another.headers"),
        format!("X-Anything: {another}\nCookie: t={another_encoded}\nX-Second: {another_basic}\n"),
    )
    .expect("headers");
    sandbox
        .lease([
            "run",
            "--scope",
            "read:site",
            "--upstream",
            "site",
            "--receipt",
            "receipt.json",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    let read = |name: &str| fs::read_to_string(sandbox.path(name)).expect(name);
    assert_eq!(read("hello.code"), "200");
    assert_eq!(read("hello.out"), "hello from upstream\n");
    assert_eq!(read("basic.code"), "200", "the token as a basic password");
    // The token in other headers too: each of them is removed (the upstream's log below
    // records them, and the request line).
    assert_eq!(read("other.code"), "200");
    assert_eq!(read("private.code"), "403", "out of scope");
    let token = read("token");
    assert!(token.starts_with("agt_"), "{token}");
    let env = read("env.txt");
    assert!(
        !env.contains(KEY),
        "the key reached the command's environment"
    );
    assert!(
        env.contains(&format!("SITE_URL=http://{}/u/site", broker.tcp)),
        "{env}"
    );
    // --print-env shows the same upstream variables, with the token as a placeholder.
    let printed = sandbox
        .lease([
            "run",
            "--scope",
            "read:site",
            "--upstream",
            "site",
            "--print-env",
        ])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    // An upstream the broker lacks stops the run before a lease exists.
    let before = sandbox.states().len();
    let ran = sandbox.path("ran");
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "read:site",
            "--upstream",
            "nope",
            "--",
            "touch",
        ])
        .arg(&ran)
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .code_is(125)
        .one_error_line();
    assert_eq!(
        out.stderr,
        "lease: cannot reach upstream nope: no upstream 'nope': the broker has site\n"
    );
    assert!(!ran.exists());
    assert_eq!(sandbox.states().len(), before, "a lease was minted");
    // A client that may mint nothing (over TCP, no token) is not told which upstreams exist.
    let answer = {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(&broker.tcp).expect("connect");
        stream
            .set_read_timeout(Some(crate::harness::PATIENCE))
            .expect("timeout");
        stream
            .write_all(
                b"POST /v1/runs HTTP/1.1\r\nHost: lease\r\nConnection: Upgrade\r\nUpgrade: lease-run\r\nContent-Length: 0\r\n\r\n{\"scope\":[\"read:site\"],\"upstreams\":[\"nope\"]}\n",
            )
            .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    assert!(answer.contains("not allowed"), "{answer}");
    assert!(!answer.contains("the broker has"), "{answer}");
    let lines: Vec<&str> = printed.stdout.lines().collect();
    let site_url = format!("SITE_URL=http://{}/u/site", broker.tcp);
    assert!(lines.contains(&site_url.as_str()), "{printed:?}");
    assert!(
        lines.contains(&"SITE_TOKEN=<token: minted when the command starts>"),
        "{printed:?}"
    );
    // The upstream saw the key, never the token, and never the out-of-scope request.
    let seen = upstream.access_log();
    assert!(
        seen.contains(&format!("GET /files/hello.txt auth=[Bearer {KEY}]")),
        "{seen}"
    );
    assert!(
        !seen.contains(&token),
        "the token reached the upstream: {seen}"
    );
    assert_eq!(read("another.code"), "200");
    for form in [&another, &another_encoded, &another_basic] {
        assert!(
            !seen.contains(form.as_str()),
            "another token reached the upstream: {seen}"
        );
    }
    // nginx logs an absent header as "-".
    assert!(
        seen.lines()
            .all(|line| line.contains("other=[-] cookie=[-] second=[-]")),
        "{seen}"
    );
    assert!(!seen.contains("/private/"), "{seen}");
    // After the run, the token opens nothing.
    let url = format!("http://{}/u/site/files/hello.txt", broker.tcp);
    let after = curl(&sandbox, &bearer(&token), &[&url]);
    assert_eq!(after.status, 401, "{after:?}");
    // The key is in no file lease wrote, and in no line the broker logged.
    for entry in walk(&sandbox.state_dir()) {
        let bytes = fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "the key is in {}",
            entry.display()
        );
    }
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    let proxied: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "proxied")
        .collect();
    assert!(
        proxied.iter().any(|e| e["upstream"] == "site"
            && e["path"] == "/files/hello.txt"
            && e["status"] == 200
            && e["action"] == "read:site"
            && e["bytes_down"] == 20),
        "{trail}"
    );
    assert!(
        proxied
            .iter()
            .any(|e| e["path"] == "/private/secret.txt" && e["reason"] == "out of scope"),
        "{trail}"
    );
    // The receipt lists the proxied requests among the run's decisions.
    let receipt: serde_json::Value = serde_json::from_str(&read("receipt.json")).expect("json");
    let decisions = receipt["decisions"].as_array().expect("decisions");
    assert!(
        decisions.iter().any(|d| d["action"] == "read:site"
            && d["granted"] == true
            && d["upstream"] == "site"
            && d["method"] == "GET"
            && d["path"] == "/files/hello.txt"
            && d["status"] == 200
            && d["bytes_up"] == 0
            && d["bytes_down"] == 20
            && d["duration_ms"].is_u64()),
        "{receipt}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "read:private" && d["granted"] == false),
        "{receipt}"
    );
    // Each proxied request in the receipt has every field its event in the trail has.
    let in_full = |decision: &serde_json::Value| {
        proxied.iter().any(|event| {
            let fields = event.as_object().expect("an object");
            fields
                .iter()
                .all(|(name, value)| name == "event" || &decision[name] == value)
        })
    };
    for decision in decisions.iter().filter(|d| d.get("upstream").is_some()) {
        assert!(
            in_full(decision),
            "{decision} lacks a field of its event: {trail}"
        );
    }
    assert!(!read("receipt.json").contains(KEY));
    // `lease suggest` counts the proxied requests as the run's decisions.
    let id = receipt["lease"]["id"].as_str().expect("id");
    let suggested = sandbox
        .lease(["suggest", id])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success()
        .stdout;
    let lines: Vec<&str> = suggested.lines().collect();
    assert_eq!(lines[0], "--scope read:site", "{suggested}");
    assert!(
        lines.contains(&"denied: read:private (out of scope)"),
        "{suggested}"
    );
    let (_, log) = broker.stop();
    let log = log.join("\n");
    assert!(!log.contains(KEY) && !log.contains(&token), "{log}");
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn an_upstream_that_echoes_the_key_gets_it_masked_in_headers_and_body() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    let token = sandbox.issue("read:site");
    let url = format!("http://{}/u/site/echo", broker.tcp);
    let reply = curl(&sandbox, &bearer(&token), &[&url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "you sent: Bearer ***\n");
    assert_eq!(reply.header("x-echo"), Some("Bearer ***"));
    assert!(!format!("{reply:?}").contains(KEY));
    // A body said to be compressed could hide the key from the masking: 502, whatever
    // `Content-Encoding` line says so.
    for path in ["gzip", "identity-then-gzip"] {
        let url = format!("http://{}/u/site/files/{path}", broker.tcp);
        let reply = curl(&sandbox, &bearer(&token), &[&url]);
        assert_eq!(reply.status, 502, "{path}: {reply:?}");
        assert!(reply.body.contains("compressed"), "{reply:?}");
        assert!(!format!("{reply:?}").contains(KEY));
    }
    // No route: 403, and the upstream never hears of it.
    let other = format!("http://{}/u/site/elsewhere", broker.tcp);
    let reply = curl(&sandbox, &bearer(&token), &[&other]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(!upstream.access_log().contains("/elsewhere"));
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    assert!(
        trail.lines().any(|l| l.contains(r#""event":"proxied""#)
            && l.contains(r#""path":"/elsewhere""#)
            && l.contains(r#""reason":"no route""#)),
        "{trail}"
    );
    // A path as long as a head may hold is kept cut to 1 KiB: a flood of them cannot rotate
    // the trail away at 60 KiB an event.
    let long = format!(
        "http://{}/u/site/elsewhere/{}",
        broker.tcp,
        "x".repeat(30_000)
    );
    assert_eq!(curl(&sandbox, &bearer(&token), &[&long]).status, 403);
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    let last: serde_json::Value =
        serde_json::from_str(trail.lines().last().expect("an event")).expect("json");
    let path = last["path"].as_str().expect("a path");
    assert!(
        path.starts_with("/elsewhere/xxx") && path.ends_with('…') && path.len() <= 1024 + 3,
        "{} bytes: {path}",
        path.len()
    );
    // A token put in the URL by mistake (its path or its query) is refused before it reaches
    // the upstream (and its logs), and is in neither the trail nor the log; a name that only
    // looks like one goes through.
    for in_url in [
        format!("http://{}/u/site/files/{token}", broker.tcp),
        format!(
            "http://{}/u/site/files/hello.txt?access_token={token}",
            broker.tcp
        ),
        // Percent-encoding a character of it hides nothing: the upstream would decode it.
        format!(
            "http://{}/u/site/files/hello.txt?access_token=%61{}",
            broker.tcp,
            &token[1..]
        ),
    ] {
        let reply = curl(&sandbox, &bearer(&token), &[&in_url]);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(
            reply.body.contains("the URL holds a lease token"),
            "{reply:?}"
        );
        assert!(!reply.body.contains(&token), "{reply:?}");
    }
    // A body with a transfer coding the broker would strip in passing is not proxied.
    let coded = curl(
        &sandbox,
        &[
            format!("Authorization: Bearer {token}"),
            "Transfer-Encoding: gzip, chunked".to_owned(),
        ],
        &["-X", "GET", "--data-binary", "x", &url],
    );
    assert_eq!(coded.status, 501, "{coded:?}");
    let lookalike = format!("http://{}/u/site/files/agt_tools_and_more", broker.tcp);
    assert_eq!(curl(&sandbox, &bearer(&token), &[&lookalike]).status, 404);
    assert!(
        !upstream.access_log().contains(&token),
        "the token reached the upstream"
    );
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    assert!(
        !trail.contains(&token),
        "the token is in the trail: {trail}"
    );
    // A token that opens nothing gets 401 there too, not a word about the routes.
    let unknown = Sandbox::new().issue("read:site");
    let reply = curl(&sandbox, &bearer(&unknown), &[&other]);
    assert_eq!(reply.status, 401, "{reply:?}");
    // Where a run reaches the upstream (`lease run --upstream`) is for a live lease's holder;
    // any other token is a 401 with its challenge.
    let ask = format!("http://{}/v1/upstreams", broker.tcp);
    let body = r#"{"name":"site"}"#;
    let reply = curl(&sandbox, &bearer(&token), &["--data", body, &ask]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(r#""base_url":"http://"#), "{reply:?}");
    for other in [unknown.as_str(), "agt_not-a-token"] {
        let reply = curl(&sandbox, &bearer(other), &["--data", body, &ask]);
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"lease\""),
            "{reply:?}"
        );
    }
    // No token: 401 with a challenge for each way a client may send it (git sends a basic
    // password only when asked for one), before any route is looked at.
    let reply = curl(&sandbox, &[], &[&url]);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.headers_named("www-authenticate"),
        ["Bearer realm=\"lease\"", "Basic realm=\"lease\""]
    );
    assert!(
        reply.body.contains("the password of Basic auth"),
        "{reply:?}"
    );
    let reply = curl(&sandbox, &[], &[&other]);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.headers_named("www-authenticate").len(), 2);
    // A redirect within the upstream stays within the broker.
    let moved = format!("http://{}/u/site/moved", broker.tcp);
    let reply = curl(&sandbox, &bearer(&token), &[&moved]);
    assert_eq!(reply.status, 302, "{reply:?}");
    assert_eq!(reply.header("location"), Some("/u/site/files/hello.txt"));
    // So does a cookie it sets: it would otherwise go with requests to every upstream.
    assert_eq!(
        reply.header("set-cookie"),
        Some("session=upstream; Path=/u/site/"),
        "{reply:?}"
    );
    // A tunnel or a reflection of the request is never proxied.
    let reply = curl(&sandbox, &bearer(&token), &["-X", "TRACE", &url]);
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(
        reply.header("allow"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
    let reply = curl(
        &sandbox,
        &bearer(&token),
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            &url,
        ],
    );
    assert_eq!(reply.status, 405, "{reply:?}");
    // An offer of HTTP/2 in clear is declined by answering in HTTP/1.1.
    let reply = curl(&sandbox, &bearer(&token), &["--http2", &url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    // A HEAD keeps the upstream's length (it has no body to mask).
    let head = format!("http://{}/u/site/files/hello.txt", broker.tcp);
    let reply = curl(&sandbox, &bearer(&token), &["-I", &head]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-length"), Some("20"), "{reply:?}");
    // An unknown upstream: 404.
    let reply = curl(
        &sandbox,
        &bearer(&token),
        &[&format!("http://{}/u/nowhere/x", broker.tcp)],
    );
    assert_eq!(reply.status, 404, "{reply:?}");
}

#[test]
fn a_key_file_open_to_others_stops_the_broker_naming_it() {
    let sandbox = Sandbox::new();
    config(&sandbox, free_port());
    let key = sandbox.path("site.key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let out = sandbox.lease(["serve"]).run().code_is(2).one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "lease: cannot serve: upstream site: secret_file {0}: it is open to group or others (mode 644): chmod 600 {0}",
            key.display()
        )
    );
    fs::write(&key, "one\ntwo\n").expect("key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let out = sandbox.lease(["serve"]).run().code_is(2).one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "lease: cannot serve: upstream site: secret_file {}: the secret contains a line break or NUL: refused (it could split a header)",
            key.display()
        )
    );
    assert!(!out.stderr.contains("one") && !out.stderr.contains("two"));
    // A link is not followed, and the refusal says so.
    let link = sandbox.path("link.key");
    std::os::unix::fs::symlink(&key, &link).expect("symlink");
    let config = sandbox.path("config/lease/config.toml");
    let text = fs::read_to_string(config).expect("config");
    sandbox.write_config(&text.replace(&key.display().to_string(), &link.display().to_string()));
    let out = sandbox.lease(["serve"]).run().code_is(2).one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "lease: cannot serve: upstream site: secret_file {}: it is a symbolic link: name the file itself",
            link.display()
        )
    );
}

/// A key held in a variable of the broker's environment (`secret_env`) is not passed on to a
/// `secret_command` it runs for another upstream.
#[test]
fn a_secret_command_does_not_get_the_keys_held_in_variables() {
    let sandbox = Sandbox::new();
    let seen = sandbox.path("seen-env");
    let missing = sandbox.path("no-such-key");
    sandbox.write_config(&format!(
        r#"[upstream.a]
url = "http://127.0.0.1:9"
secret_env = "LEASE_TEST_KEY_A"

[upstream.b]
url = "http://127.0.0.1:9"
secret_command = ["sh", "-c", "env > '{}'; echo key-b"]

[upstream.c]
url = "http://127.0.0.1:9"
secret_file = "{}"
"#,
        seen.display(),
        missing.display()
    ));
    // Upstream c's missing key stops the broker once a's and b's are loaded.
    let out = sandbox
        .lease(["serve"])
        .env("LEASE_TEST_KEY_A", "the-strong-key-of-a")
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.contains("upstream c: secret_file"), "{out:?}");
    let env = fs::read_to_string(&seen).expect("the command ran");
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("the-strong-key-of-a"), "{env}");
    assert!(!env.contains("LEASE_TEST_KEY_A"), "{env}");
}

/// A SIGTERM while the broker waits for a `secret_command` as it starts stops it at once,
/// gracefully, and the command with it (the broker waited out the command's 10 s deadline).
#[test]
fn a_sigterm_while_a_secret_command_runs_at_start_stops_the_broker_at_once() {
    use nix::sys::signal::{Signal, kill};
    // The command itself runs on; or it has ended, and what it started keeps its output open.
    for (case, script) in [
        ("running", "echo $$ > '{}'; exec sleep 30"),
        ("output held", "sleep 30 & echo $! > '{}'"),
    ] {
        let sandbox = Sandbox::new();
        let pid_file = sandbox.path("command.pid");
        // A config of this broker's own: under LEASE_TEST_MODE=broker the sandbox's broker
        // reads the sandbox's, and would run the command too.
        let config = sandbox.path("slow.toml");
        let script = script.replace("{}", &pid_file.display().to_string());
        fs::write(
            &config,
            format!(
                "[upstream.slow]\nurl = \"http://127.0.0.1:9\"\nsecret_command = [\"sh\", \"-c\", \"{script}\"]\n"
            ),
        )
        .expect("config");
        let mut command = sandbox
            .lease(["serve", "--listen"])
            .arg(format!("unix:{}", sandbox.path("slow.sock").display()))
            .env("LEASE_CONFIG", &config)
            .command;
        if let Some(url) = sandbox.store_url() {
            command.arg("--store").arg(url);
        }
        let mut broker = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn lease serve");
        let log = Lines::from(broker.stderr.take().expect("stderr"));
        let sleeper = wait_for_file(&pid_file);
        let asked = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(broker.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let status = wait_for_exit(&mut broker);
        let took = asked.elapsed();
        let log = log.rest();
        assert_eq!(status.code(), Some(0), "{case}: {status:?}: {log:?}");
        assert!(
            took < Duration::from_secs(5),
            "{case}: stopped after {took:?}: {log:?}"
        );
        assert_eq!(
            log,
            [
                "lease serve: stopped before it was ready: upstream slow: secret_command: sh was stopped: the broker was asked to stop"
            ],
            "{case}"
        );
        // Killed with its group (a zombie left to init at most): SIGKILL was sent, and the
        // sleep is gone as soon as the kernel has run it down (at once, unless the machine is
        // loaded).
        let state = || {
            let stat =
                fs::read_to_string(format!("/proc/{}/stat", sleeper.trim())).unwrap_or_default();
            stat.rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next())
        };
        let deadline = Instant::now() + crate::harness::PATIENCE;
        while !matches!(state(), None | Some('Z' | 'X')) {
            assert!(
                Instant::now() < deadline,
                "{case}: the sleep it started is still there ({:?})",
                state()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn upstream_without_a_broker_is_refused_before_anything_runs() {
    let sandbox = Sandbox::new();
    if crate::harness::local_only("it checks the local mode's refusal") {
        return;
    }
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a:b",
            "--upstream",
            "site",
            "--",
            "touch",
            "ran",
        ])
        .run()
        .code_is(125)
        .one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        "lease: --upstream site needs a broker: upstreams and their keys live in the broker's config; set LEASE_BROKER or --broker"
    );
    assert!(!sandbox.path("ran").exists());
}

/// `lease run --scope read:site --upstream site -- COMMAND...` through `broker`.
fn site_run(sandbox: &Sandbox, broker: &Broker, command: &[&str]) -> crate::harness::Out {
    let mut argv = vec!["run", "--scope", "read:site", "--upstream", "site", "--"];
    argv.extend(command);
    sandbox
        .lease(argv)
        .env("LEASE_BROKER", broker.endpoint())
        .run()
}

/// `len` bytes that do not repeat in any short period (xorshift), written to `path`.
fn noise(path: &std::path::Path, len: usize) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    fs::write(path, bytes).expect("noise written");
}

/// The status curl got for `args` with `token` as a bearer (from a private file, never argv);
/// the body goes where `args` say.
fn status_of(sandbox: &Sandbox, token: &str, args: &[&str]) -> String {
    let headers = bearer_file(sandbox, "status.headers", token);
    let out = Command::new("curl")
        .args(["-s", "-w", "%{http_code}", "-H"])
        .arg(format!("@{}", headers.display()))
        .args(args)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker's peak resident memory, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn two_hundred_megabytes_each_way_stream_through_in_bounded_memory() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    // Seconds of both cores: no test with a deadline of a second runs meanwhile.
    let _load = crate::harness::loading();
    let token = sandbox.issue("read:site,write:site");
    let size = 200 * 1024 * 1024;
    let big = upstream.dir.join("site/files/big.bin");
    noise(&big, size);
    let down = sandbox.path("down.bin");
    let url = format!("http://{}/u/site/files/big.bin", broker.tcp);
    let status = status_of(
        &sandbox,
        &token,
        &["-o", &down.display().to_string(), "--max-time", "60", &url],
    );
    assert_eq!(status, "200");
    assert!(
        fs::read(&down).expect("downloaded") == fs::read(&big).expect("original"),
        "the download differs"
    );
    // Up, with `Expect: 100-continue` as curl sends it for a large body: the broker answers it.
    let url = format!("http://{}/u/site/upload/big.bin", broker.tcp);
    let status = status_of(
        &sandbox,
        &token,
        &[
            "-o",
            "/dev/null",
            "-T",
            &big.display().to_string(),
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--max-time",
            "60",
            &url,
        ],
    );
    assert!(matches!(status.as_str(), "201" | "204"), "{status}");
    let received = upstream.dir.join("received/upload/big.bin");
    assert!(
        fs::read(&received).expect("uploaded") == fs::read(&big).expect("original"),
        "the upload differs"
    );
    let peak = peak_rss_kib(broker.pid());
    assert!(
        peak < 64 * 1024,
        "the broker's peak RSS was {peak} KiB for 200 MB each way"
    );
}

/// A server-sent events endpoint: the first event, then nothing until the test says so, then
/// the second. A tiny server of the test's own: nginx cannot hold a response open on cue.
const SSE_SERVER: &str = r#"
import http.server, os, sys, time
key, gate = sys.argv[1], sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer " + key:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        def chunk(data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        chunk(b"data: one\n\n")
        deadline = time.time() + 10
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.01)
        chunk(b"data: two\n\n")
        chunk(b"")
        self.close_connection = True
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.handle_request()
"#;

#[test]
fn server_sent_events_reach_the_client_one_by_one() {
    use std::io::BufRead;
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate");
    let mut server = Command::new("python3")
        .args(["-c", SSE_SERVER, KEY])
        .arg(&gate)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut first = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("port");
    let port: u16 = first.trim().parse().expect("a port");
    config(&sandbox, port);
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:site");
    let out = sandbox.path("events.txt");
    let headers = bearer_file(&sandbox, "events.headers", &token);
    let mut client = Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", "-o"])
        .arg(&out)
        .arg("-H")
        .arg(format!("@{}", headers.display()))
        .arg(format!("http://{}/u/site/files/events", broker.tcp))
        .spawn()
        .expect("curl");
    // The first event arrives while the server still holds the second back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("data: one\n\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first event did not come through on its own"
        );
        std::thread::yield_now();
    }
    assert!(!fs::read_to_string(&out).expect("events").contains("two"));
    fs::write(&gate, "").expect("gate");
    assert!(client.wait().expect("curl").success());
    assert_eq!(
        fs::read_to_string(&out).expect("events"),
        "data: one\n\ndata: two\n\n"
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn an_unmodified_python_client_calls_the_upstream_inside_the_run() {
    if !nginx_present() {
        return;
    }
    if Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        crate::harness::skip("no-python-requests", "python3 requests is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let upstream = Upstream::start(&sandbox);
    config(&sandbox, upstream.port);
    let broker = Broker::start(&sandbox, &[]);
    let client = r#"
import os, requests
base, token = os.environ["SITE_URL"], os.environ["SITE_TOKEN"]
r = requests.get(base + "/files/hello.txt", headers={"Authorization": "Bearer " + token})
print(r.status_code, r.text, end="")
r = requests.get(base + "/private/secret.txt", auth=("x", token))
print(r.status_code)
"#;
    let out = site_run(&sandbox, &broker, &["python3", "-c", client]).success();
    assert_eq!(out.stdout, "200 hello from upstream\n403\n");
}

/// `git http-backend` behind nginx and fcgiwrap, serving `repos/` only to requests that carry
/// the key as the password of basic auth (user `git`), as a git host would.
struct GitHost {
    dir: PathBuf,
    port: u16,
    fcgiwrap: std::process::Child,
    _server: NginxServer,
}

impl GitHost {
    fn start(sandbox: &Sandbox) -> GitHost {
        use base64::Engine as _;
        let dir = sandbox.path("githost");
        let repo = dir.join("repos/site.git");
        let git = |args: &[&str], cwd: &std::path::Path| {
            let out = Command::new("git")
                .args(args)
                .current_dir(cwd)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .expect("git");
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        fs::create_dir_all(&repo).expect("repo dir");
        git(&["init", "-q", "--bare", "-b", "main"], &repo);
        git(&["config", "http.receivepack", "true"], &repo);
        let seed = dir.join("seed");
        fs::create_dir_all(&seed).expect("seed");
        git(&["init", "-q", "-b", "main"], &seed);
        fs::write(seed.join("README"), "the site\n").expect("readme");
        git(&["add", "README"], &seed);
        git(
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "seed",
            ],
            &seed,
        );
        git(&["push", "-q", &repo.display().to_string(), "main"], &seed);
        let socket = dir.join("fcgiwrap.sock");
        let fcgiwrap = Command::new("fcgiwrap")
            .arg("-s")
            .arg(format!("unix:{}", socket.display()))
            .spawn()
            .expect("fcgiwrap");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "fcgiwrap did not listen"
            );
            std::thread::yield_now();
        }
        let backend = String::from_utf8(
            Command::new("git")
                .arg("--exec-path")
                .output()
                .expect("git")
                .stdout,
        )
        .expect("path");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("git:{KEY}"));
        let port = free_port();
        let http = format!(
            "  log_format seen '$request_method $uri auth=[$http_authorization]';
  map $http_authorization $keyed {{ \"Basic {basic}\" 1; default 0; }}
  server {{
    listen 127.0.0.1:{port};
    access_log {d}/access.log seen;
    client_max_body_size 0;
    location / {{
      if ($keyed = 0) {{ return 401; }}
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:{socket};
      fastcgi_param SCRIPT_FILENAME {backend}/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT {d}/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL \"\";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER git;
    }}
  }}",
            d = dir.display(),
            socket = socket.display(),
            backend = backend.trim(),
        );
        let server = NginxServer::start(dir.clone(), &http);
        GitHost {
            dir,
            port,
            fcgiwrap,
            _server: server,
        }
    }
}

impl Drop for GitHost {
    fn drop(&mut self) {
        let _ = self.fcgiwrap.kill();
        let _ = self.fcgiwrap.wait();
    }
}

/// A run's git, unmodified, sends its lease token: to clone, as the password of basic auth
/// from a credential helper that reads it from the environment (git sends it only once the
/// broker asks for basic auth); to push, as a bearer (`http.extraHeader` from the
/// environment). Never as an argument. The broker adds the key as basic auth.
const GIT_SCRIPT: &str = r#"
set -e
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_COUNT=1
cat /proc/self/environ | tr '\0' '\n' > "environ.$1"
case "$1" in
clone)
    export GIT_CONFIG_KEY_0=credential.helper
    export GIT_CONFIG_VALUE_0='!f() { echo username=lease; echo "password=$LEASE_TOKEN"; }; f'
    git clone -q "$GIT_URL/site.git" clone
    ;;
push)
    export GIT_CONFIG_KEY_0=http.extraHeader GIT_CONFIG_VALUE_0="Authorization: Bearer $LEASE_TOKEN"
    cd clone
    echo "change $2" >> README
    git -c user.name=t -c user.email=t@t commit -q -am "change $2"
    git push -q origin main 2> "../push.$2.err"
    ;;
esac
"#;

#[test]
fn git_clones_and_pushes_through_the_broker_as_the_lease_allows() {
    if !nginx_present() {
        return;
    }
    if Command::new("fcgiwrap").arg("-h").output().is_err() {
        crate::harness::skip("no-fcgiwrap", "fcgiwrap is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let host = GitHost::start(&sandbox);
    let key = sandbox.path("git.key");
    fs::write(&key, format!("{KEY}\n")).expect("key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    sandbox.write_config(&format!(
        r#"[upstream.git]
url = "http://127.0.0.1:{port}"
secret_file = "{key}"
inject = "basic"
basic_user = "git"
child_env = {{ base_url = "GIT_URL" }}

[[upstream.git.route]]
method = "GET"
path = "/*.git/info/refs"
action = "repo:read"

[[upstream.git.route]]
method = "POST"
path = "/*.git/git-upload-pack"
action = "repo:read"

[[upstream.git.route]]
method = "POST"
path = "/*.git/git-receive-pack"
action = "repo:write"
"#,
        port = host.port,
        key = key.display()
    ));
    let broker = Broker::start(&sandbox, &[]);
    let run = |scope: &str, args: &[&str]| {
        let mut argv = vec![
            "run",
            "--scope",
            scope,
            "--upstream",
            "git",
            "--receipt",
            "receipt.json",
            "--",
            "sh",
            "-c",
            GIT_SCRIPT,
            "git",
        ];
        argv.extend(args);
        sandbox
            .lease(argv)
            .env("LEASE_BROKER", broker.endpoint())
            .run()
    };
    run("repo:read", &["clone"]).success();
    assert_eq!(
        fs::read_to_string(sandbox.path("clone/README")).expect("cloned"),
        "the site\n"
    );
    // Reading is all this run may do: its push is refused, and the host never sees it.
    let refused = run("repo:read", &["push", "1"]);
    assert_ne!(refused.code(), Some(0), "{refused:?}");
    let err = fs::read_to_string(sandbox.path("push.1.err")).expect("push error");
    assert!(err.contains("403"), "{err}");
    let seen = fs::read_to_string(host.dir.join("access.log")).expect("host log");
    assert!(!seen.contains("POST /site.git/git-receive-pack"), "{seen}");
    // A run that may write pushes (the commit the refused push left behind goes along).
    run("repo:read,repo:write", &["push", "2"]).success();
    let log = Command::new("git")
        .args(["--git-dir"])
        .arg(host.dir.join("repos/site.git"))
        .args(["log", "--format=%s", "main"])
        .output()
        .expect("git log");
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "change 2\nchange 1\nseed\n"
    );
    // The host saw the key, never a lease token; the key is nowhere the runs could reach.
    let seen = fs::read_to_string(host.dir.join("access.log")).expect("host log");
    assert!(seen.contains("POST /site.git/git-receive-pack"), "{seen}");
    assert!(!seen.contains("agt_"), "{seen}");
    let mut places = walk(&sandbox.path("clone"));
    places.extend(walk(&sandbox.state_dir()));
    places.extend(["environ.clone", "environ.push", "receipt.json"].map(|f| sandbox.path(f)));
    for place in places {
        let bytes = fs::read(&place).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "the key is in {}",
            place.display()
        );
    }
    assert!(
        fs::read_to_string(sandbox.path("environ.clone"))
            .expect("environ")
            .contains("GIT_URL=http://"),
        "the run got the upstream's URL"
    );
}

#[test]
fn an_upstream_with_a_listener_of_its_own_serves_at_the_root() {
    let own = free_port();
    let listen = format!("listen = \"127.0.0.1:{own}\"");
    let Some((sandbox, _upstream, broker)) = nginx_upstream_and_broker_with(&listen) else {
        return;
    };
    let token = sandbox.issue("read:site");
    let reply = curl(
        &sandbox,
        &bearer(&token),
        &[&format!("http://127.0.0.1:{own}/files/hello.txt")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "hello from upstream\n");
    let out = site_run(
        &sandbox,
        &broker,
        &["sh", "-c", "printf '%s' \"$SITE_URL\""],
    )
    .success();
    assert_eq!(out.stdout, format!("http://127.0.0.1:{own}"));
}

#[test]
fn a_profile_names_the_upstreams_its_runs_reach() {
    if !nginx_present() {
        return;
    }
    let sandbox = Sandbox::new();
    let upstream = Upstream::start(&sandbox);
    config(&sandbox, upstream.port);
    let path = sandbox.path("config/lease/config.toml");
    let text = fs::read_to_string(&path).expect("config");
    sandbox.write_config(&format!(
        "{text}\n[profile.reader]\nscope = [\"read:site\"]\nupstreams = [\"site\"]\n"
    ));
    let broker = Broker::start(&sandbox, &[]);
    let script = r#"curl -s -H "Authorization: Bearer $SITE_TOKEN" "$SITE_URL/files/hello.txt""#;
    let out = sandbox
        .lease(["run", "--profile", "reader", "--", "sh", "-c", script])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    assert_eq!(out.stdout, "hello from upstream\n");
    // The same upstream named again, on the command line as well, is still one upstream; a
    // variable named twice is refused before anything runs, saying which.
    let out = sandbox
        .lease([
            "run",
            "--profile",
            "reader",
            "--upstream",
            "site",
            "--upstream",
            "site",
        ])
        .args(["--", "sh", "-c", script])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    assert_eq!(out.stdout, "hello from upstream\n");
    let out = sandbox
        .lease([
            "run",
            "--profile",
            "reader",
            "--env",
            "SITE_URL",
            "--",
            "touch",
            "ran",
        ])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .code_is(125)
        .one_error_line();
    assert!(
        out.stderr
            .starts_with("lease: SITE_URL would be set twice for the command: "),
        "{out:?}"
    );
    assert!(!sandbox.path("ran").exists());
    if crate::harness::local_only("the local refusal needs no broker") {
        return;
    }
    let out = sandbox
        .lease(["run", "--profile", "reader", "--", "touch", "ran"])
        .run()
        .code_is(125)
        .one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        "lease: the profile's upstream site needs a broker: upstreams and their keys live in the broker's config; set LEASE_BROKER or --broker"
    );
    assert!(!sandbox.path("ran").exists());
}

/// An https upstream whose certificate a private CA signed: trusted through `ca_file`, and a
/// clear 502 without it (the system's roots do not know that CA); an upstream that is not
/// there: 502. No answer names the key or the token.
#[test]
fn an_https_upstream_is_trusted_through_its_ca_file_and_failures_are_502() {
    if !nginx_present() {
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() {
        crate::harness::skip("no-openssl", "openssl is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let (ca, cert, key) = crate::broker::certificates(&sandbox);
    let upstream = Upstream::start_with(&sandbox, Some((&cert, &key)));
    let body = |ca_file: Option<&std::path::Path>, port: u16| {
        let ca_line = ca_file
            .map(|ca| format!("ca_file = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        let key = sandbox.path("site.key");
        fs::write(&key, format!("{KEY}\n")).expect("key");
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        format!(
            "[upstream.site]\nurl = \"https://127.0.0.1:{port}\"\nsecret_file = \"{}\"\n{ca_line}[[upstream.site.route]]\nmethod = \"GET\"\npath = \"/files/**\"\naction = \"read:site\"\n",
            key.display()
        )
    };
    sandbox.write_config(&body(Some(&ca), upstream.port));
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:site,write:site=2");
    let url = |broker: &Broker| format!("http://{}/u/site/files/hello.txt", broker.tcp);
    let reply = curl(&sandbox, &bearer(&token), &[&url(&broker)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "hello from upstream\n");
    drop(broker);
    // Without the CA: the handshake fails, and the answer says so.
    sandbox.write_config(&body(None, upstream.port));
    let broker = Broker::start(&sandbox, &[]);
    let reply = curl(&sandbox, &bearer(&token), &[&url(&broker)]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(reply.body.contains("the upstream site failed"), "{reply:?}");
    assert!(!reply.body.contains(KEY) && !reply.body.contains(&token));
    drop(broker);
    // Nothing listening there: 502 too.
    sandbox.write_config(&body(Some(&ca), free_port()));
    let broker = Broker::start(&sandbox, &[]);
    let reply = curl(&sandbox, &bearer(&token), &[&url(&broker)]);
    assert_eq!(reply.status, 502, "{reply:?}");
    let (_, log) = broker.stop();
    assert!(!log.join("\n").contains(KEY));
}

/// A download in flight when its lease is revoked is cut within a second or two (the broker
/// checks the lease of every open stream each second), not left to run for the 16 s that
/// 1 MiB takes at 64 KiB/s.
#[test]
fn a_download_in_flight_is_cut_when_its_lease_is_revoked() {
    let Some((sandbox, _upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    let issued = sandbox.issue_json("read:site", &[]);
    let (id, token) = (
        issued["id"].as_str().expect("id"),
        issued["token"].as_str().expect("token"),
    );
    let (mut download, got) = slow_download_under_way(&sandbox, &broker, token);
    sandbox
        .lease(["revoke", id])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    let revoked = Instant::now();
    let status = crate::harness::wait_for_exit(&mut download);
    let took = revoked.elapsed();
    assert!(!status.success(), "the download finished: {status:?}");
    // Checked again every second; the whole download would take 16 s.
    assert!(took < Duration::from_secs(8), "cut after {took:?}");
    let len = fs::metadata(&got).expect("got").len();
    assert!(len < 1 << 20, "all of it came: {len}");
    let (_, log) = broker.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("cut a proxied request in flight: revoked")),
        "{log:?}"
    );
}

/// curl downloading the 1 MiB served at 64 KiB/s through the broker with `token`, once its first
/// bytes have come (into the file returned).
fn slow_download_under_way(
    sandbox: &Sandbox,
    broker: &Broker,
    token: &str,
) -> (std::process::Child, PathBuf) {
    let headers = bearer_file(sandbox, "headers", token);
    let got = sandbox.path("got.bin");
    let download = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&got)
        .arg("-H")
        .arg(format!("@{}", headers.display()))
        .arg(format!("http://{}/u/site/files/slow/big.bin", broker.tcp))
        .spawn()
        .expect("curl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&got).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "nothing came through");
        std::thread::sleep(Duration::from_millis(20));
    }
    (download, got)
}

/// An upstream that goes away in the middle of a body never passes for a body that ended well:
/// the client's response stops without its last chunk (curl's exit 18).
#[test]
fn an_upstream_gone_mid_body_leaves_the_client_a_body_cut_short() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    let token = sandbox.issue("read:site");
    let (mut download, got) = slow_download_under_way(&sandbox, &broker, &token);
    // nginx stops at once (`-s stop`), its connections closed mid-body.
    drop(upstream);
    let status = crate::harness::wait_for_exit(&mut download);
    assert_eq!(status.code(), Some(18), "curl: {status:?}");
    let len = fs::metadata(&got).expect("got").len();
    assert!(len < 1 << 20, "all of it came: {len}");
}

/// A budget on the lease is charged per proxied request: the third of two uses is refused,
/// and the upstream never sees it.
#[test]
fn each_proxied_request_spends_the_leases_budget() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    let token = sandbox.issue("read:site=2");
    let url = format!("http://{}/u/site/files/hello.txt", broker.tcp);
    for _ in 0..2 {
        assert_eq!(curl(&sandbox, &bearer(&token), &[&url]).status, 200);
    }
    let reply = curl(&sandbox, &bearer(&token), &[&url]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("used up"), "{reply:?}");
    let log = upstream.access_log();
    let reached = log
        .lines()
        .filter(|l| l.starts_with("GET /files/hello.txt "))
        .count();
    assert_eq!(reached, 2, "{log}");
}

/// A client that leaves while the upstream has not answered yet: its request reached the
/// upstream and spent a use, so it is in the trail all the same (a `proxied` event without a
/// `status`), as every proxied request is.
#[test]
fn a_request_whose_client_leaves_before_the_answer_is_in_the_trail() {
    let Some((sandbox, upstream, broker)) = nginx_upstream_and_broker() else {
        return;
    };
    let issued = sandbox.issue_json("read:site=5", &[]);
    let (id, token) = (
        issued["id"].as_str().expect("id"),
        issued["token"].as_str().expect("token"),
    );
    let headers = bearer_file(&sandbox, "late.headers", token);
    // The upstream (nginx, waiting on a socket that never answers) sends no answer; curl is
    // stopped once nginx has passed the request on.
    let mut client = sandbox
        .command("curl")
        .args(["-s", "--max-time", "60", "-H"])
        .arg(format!("@{}", headers.display()))
        .arg(format!("http://{}/u/site/files/late", broker.tcp))
        .command
        .spawn()
        .expect("curl");
    upstream.silent.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + crate::harness::PATIENCE;
    let _held = loop {
        match upstream.silent.accept() {
            Ok((held, _)) => break held,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "nginx never passed the request on"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("accept: {err}"),
        }
    };
    client.kill().expect("stop curl");
    client.wait().expect("reap curl");
    let event = loop {
        let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap_or_default();
        let found = trail
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "proxied" && e["path"] == "/files/late");
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no event for the request: {trail}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(event["lease"], id, "{event}");
    assert_eq!(event["action"], "read:site", "{event}");
    assert_eq!(event["reason"], "granted", "{event}");
    assert!(event.get("status").is_none(), "{event}");
    // The upstream was reached (nginx logs the request once the broker has left it), and the
    // use is spent.
    while !upstream.access_log().contains("GET /files/late ") {
        assert!(Instant::now() < deadline, "{}", upstream.access_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = sandbox.lease(["list", "--json"]).run().success().json();
    let lease = listed
        .as_array()
        .and_then(|all| all.iter().find(|l| l["id"] == id))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(lease["scope_uses_left"]["read:site"], 4, "{lease}");
    // `lease log` says which request it was, for people too.
    let log = sandbox.lease(["log", "--id", id]).run().success().stdout;
    assert!(
        log.lines().any(|l| l.contains(" proxied ")
            && l.contains("upstream=site method=GET path=/files/late ")
            && l.contains(" up=0B down=0B")),
        "{log}"
    );
}
