//! Runtime identity through the daemon: short-lived grants enforced in the
//! kernel, step-up requests turned into grants by an operator, revocation
//! that takes effect before the command returns, and agents that cannot
//! answer, list or grant anything themselves.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use rtid_tests::{daemon::*, *};

fn policy(scratch: &TestDir, tool: &str, fallback: &str) -> String {
    let secret_dir = scratch.0.join("secret").display().to_string();
    write_policy(
        scratch,
        "policy.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: grants\nspec:\n  identities:\n    - name: coder\n      owner: alice@example.com\n      purpose: tests\n      fileDenyFallback: {fallback}\n      files:\n        - {{ id: secret, path: {secret_dir}/, action: deny }}\n      exec:\n        - {{ id: tool, path: {tool}, action: step_up }}\n"
        ),
    )
}

fn json_field(output: &str, key: &str) -> Option<String> {
    let start = output.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(output[start..].split('"').next()?.to_string())
}

#[test]
fn a_grant_allows_for_its_ttl_and_names_itself_in_events() {
    let scratch = TestDir::new("grant-data");
    let tool = scratch.path("bin/tool");
    let secret = scratch.file("secret/key", "KEY");
    let mut daemon = Daemon::start("grant", vec![policy(&scratch, &tool, "flag")]);
    let mut events = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "--json", "events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let probe = probe_path().display().to_string();
    let open = |daemon: &Daemon| text(&daemon.cli(&["run", "--identity", "coder", "--", &probe, "open", &secret]));

    // Denied (flagged instead on this backend): the event says deny by rule secret.
    assert!(open(&daemon).contains("ok KEY"));
    let too_long = daemon.cli(&["grant", "coder", "--open", &secret, "--ttl", "48h"]);
    assert!(text(&too_long).contains("longer than the maximum"), "{}", text(&too_long));
    let missing_ttl = daemon.cli(&["grant", "coder", "--open", &secret]);
    assert_ne!(missing_ttl.status.code(), Some(0), "a TTL is required");
    let granted = daemon.cli(&["grant", "coder", "--open", &secret, "--ttl", "2s", "--reason", "ticket 42"]);
    assert!(text(&granted).contains("granted"), "{}", text(&granted));
    let grant_id = text(&granted).split_whitespace().next().unwrap().to_string();
    let list = daemon.cli(&["grants"]);
    assert!(text(&list).contains(&grant_id) && text(&list).contains("ticket 42"), "{}", text(&list));
    assert!(open(&daemon).contains("ok KEY"));
    // The allowed open names the grant.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut saw_grant = false;
    let mut saw_deny_after = false;
    let mut expired = false;
    while std::time::Instant::now() < deadline && !(saw_grant && saw_deny_after) {
        if saw_grant && !expired {
            std::thread::sleep(Duration::from_millis(2200));
            expired = true;
            assert!(open(&daemon).contains("ok KEY"));
        }
        let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else { continue };
        if !line.contains(&secret) {
            continue;
        }
        if line.contains(&format!("\"rule_id\":\"{grant_id}\"")) && line.contains("\"verdict\":\"audit\"") {
            saw_grant = true;
            assert!(line.contains(&format!("\"grant_id\":\"{grant_id}\"")), "the event names the grant: {line}");
        }
        if expired && line.contains("\"rule_id\":\"secret\"") && line.contains("\"verdict\":\"deny\"") {
            saw_deny_after = true;
        }
    }
    let _ = events.kill();
    assert!(saw_grant, "an event allowed by the grant names {grant_id}");
    assert!(saw_deny_after, "after the TTL the deny rule decides again");
    daemon.kill_hard();
}

#[test]
fn step_up_becomes_a_request_that_an_operator_approves_or_denies() {
    let scratch = TestDir::new("stepup-data");
    let tool = scratch.path("bin/tool");
    std::fs::create_dir_all(scratch.path("bin")).unwrap();
    std::fs::copy(probe_path(), &tool).unwrap();
    let marker = scratch.path("marker");
    // A local approver endpoint that records what it is sent.
    let approver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", approver.local_addr().unwrap());
    let (hook_tx, hook_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in approver.incoming().map_while(Result::ok) {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buffer = vec![0u8; 8192];
            let read = stream.read(&mut buffer).unwrap_or(0);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = hook_tx.send(String::from_utf8_lossy(&buffer[..read]).into_owned());
        }
    });
    let extra = vec!["--approval-webhook".to_string(), hook, "--approval-timeout".into(), "6s".into()];
    let daemon = Daemon::start_with("stepup", vec![policy(&scratch, &tool, "kill")], extra);
    let run_tool = |daemon: &Daemon| daemon.cli(&["run", "--identity", "coder", "--", &tool, "marker", &marker]);

    let first = run_tool(&daemon);
    assert_eq!(first.status.code(), Some(128 + 9), "stopped before it runs on this backend: {}", text(&first));
    assert!(!std::path::Path::new(&marker).exists());
    let second = run_tool(&daemon);
    assert_eq!(second.status.code(), Some(128 + 9));
    std::thread::sleep(Duration::from_millis(300));
    let approvals = daemon.cli(&["--json", "approvals"]);
    let listing = text(&approvals);
    let request = json_field(&listing, "id").expect("a request is open");
    assert!(listing.contains("\"owner\":\"alice@example.com\"") && listing.contains(&tool), "{listing}");
    assert!(listing.contains("\"attempts\":2"), "the retry joined the pending request: {listing}");

    // An agent cannot list or answer approvals, grant or release.
    let binary = rtid_binary().display().to_string();
    for args in [
        vec!["approvals"],
        vec!["approve", request.as_str()],
        vec!["grant", "coder", "--exec", &tool, "--ttl", "1m"],
        vec!["release", "coder"],
    ] {
        let mut command = vec!["run", "--identity", "coder", "--", binary.as_str(), "--socket"];
        let socket = daemon.socket();
        command.push(&socket);
        command.extend(args.iter().copied());
        let inside = daemon.cli(&command);
        assert!(refused_to_an_identity(&inside), "{args:?}: {} ({:?})", text(&inside), inside.status);
    }

    let posted = hook_rx.recv_timeout(Duration::from_secs(10)).expect("the webhook receives the request");
    assert!(posted.starts_with("POST /hook") && posted.contains(&request) && posted.contains(&tool), "{posted}");

    let approved = daemon.cli(&["approve", &request, "--ttl", "1m", "--once"]);
    assert!(text(&approved).contains("approved"), "{}", text(&approved));
    let retry = run_tool(&daemon);
    assert_eq!(retry.status.code(), Some(0), "the retry runs after approval: {}", text(&retry));
    assert!(std::path::Path::new(&marker).exists());
    std::fs::remove_file(&marker).unwrap();
    let second_use = run_tool(&daemon);
    assert_eq!(second_use.status.code(), Some(128 + 9), "--once: a second use is stopped again: {}", text(&second_use));
    assert!(!std::path::Path::new(&marker).exists());
    let again = daemon.cli(&["approve", &request]);
    assert_ne!(again.status.code(), Some(0), "a request is answered once: {}", text(&again));

    // A denied request stays denied; an expired one cannot be approved.
    let other = scratch.path("bin/other");
    std::fs::copy(probe_path(), &other).unwrap();
    let stepped = write_policy(
        &scratch,
        "more.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: more\nspec:\n  identities:\n    - name: coder\n      exec:\n        - {{ id: tool, path: {tool}, action: step_up }}\n        - {{ id: other, path: {other}, action: step_up }}\n"
        ),
    );
    assert_eq!(daemon.cli(&["policy", "apply", &stepped]).status.code(), Some(0));
    let denied_run = daemon.cli(&["run", "--identity", "coder", "--", &other, "marker", &marker]);
    assert_eq!(denied_run.status.code(), Some(128 + 9));
    std::thread::sleep(Duration::from_millis(300));
    let listing = text(&daemon.cli(&["--json", "approvals"]));
    let pending =
        listing.split("\"id\":\"").skip(1).map(|rest| rest.split('"').next().unwrap_or("").to_string()).last().unwrap();
    assert_ne!(pending, request);
    assert_eq!(daemon.cli(&["deny", &pending, "--reason", "not today"]).status.code(), Some(0));
    assert_ne!(daemon.cli(&["approve", &pending]).status.code(), Some(0), "a denied request stays denied");
    let still = daemon.cli(&["run", "--identity", "coder", "--", &other, "marker", &marker]);
    assert_eq!(still.status.code(), Some(128 + 9), "denied: the retry is still stopped");
    std::thread::sleep(Duration::from_millis(300));
    let listing = text(&daemon.cli(&["--json", "approvals"]));
    let newest =
        listing.split("\"id\":\"").skip(1).map(|rest| rest.split('"').next().unwrap_or("").to_string()).last().unwrap();
    std::thread::sleep(Duration::from_millis(6300));
    let late = daemon.cli(&["approve", &newest]);
    assert!(text(&late).contains("expired"), "an expired request cannot be approved: {}", text(&late));
}

#[test]
fn a_webhook_that_never_answers_delays_neither_the_agent_nor_other_requests() {
    let scratch = TestDir::new("deadhook-data");
    std::fs::create_dir_all(scratch.path("bin")).unwrap();
    let (tool, other) = (scratch.path("bin/tool"), scratch.path("bin/other"));
    std::fs::copy(probe_path(), &tool).unwrap();
    std::fs::copy(probe_path(), &other).unwrap();
    // Accepts every connection and never answers: each POST waits out its
    // timeout, three times. Anything that waited for it would take seconds.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", blackhole.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = blackhole.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let policy = write_policy(
        &scratch,
        "policy.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: deadhook\nspec:\n  identities:\n    - name: coder\n      exec:\n        - {{ id: tool, path: {tool}, action: step_up }}\n        - {{ id: other, path: {other}, action: step_up }}\n"
        ),
    );
    let daemon = Daemon::start_with("deadhook", vec![policy], vec!["--approval-webhook".into(), hook]);

    let started = std::time::Instant::now();
    for binary in [&tool, &other] {
        let run = daemon.cli(&["run", "--identity", "coder", "--", binary, "marker", &scratch.path("marker")]);
        assert_eq!(run.status.code(), Some(128 + 9), "stopped at once: {}", text(&run));
    }
    // Both requests are open while the first webhook call still hangs (it
    // gives up only after 3 attempts of 2 s each).
    let mut listing = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        listing = text(&daemon.cli(&["--json", "approvals"]));
        if listing.contains(&tool) && listing.contains(&other) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let waited = started.elapsed();
    assert!(listing.contains(&tool) && listing.contains(&other), "both requests are open: {listing}");
    assert!(
        waited < Duration::from_secs(4),
        "the agents and the second request did not wait for the dead webhook ({waited:?})"
    );
    let request = json_field(&listing, "id").expect("a request id");
    let approved = daemon.cli(&["approve", &request, "--ttl", "1m"]);
    assert!(
        text(&approved).contains("approved"),
        "approving does not wait for the webhook either: {}",
        text(&approved)
    );
}

#[test]
fn grants_and_pending_requests_survive_a_daemon_restart() {
    let scratch = TestDir::new("restart-grants-data");
    std::fs::create_dir_all(scratch.path("bin")).unwrap();
    let tool = scratch.path("bin/tool");
    std::fs::copy(probe_path(), &tool).unwrap();
    let secret = scratch.file("secret/key", "KEY");
    let marker = scratch.path("marker");
    let mut daemon = Daemon::start("restart-grants", vec![policy(&scratch, &tool, "kill")]);
    let probe = probe_path().display().to_string();
    let open = |daemon: &Daemon| daemon.cli(&["run", "--identity", "coder", "--", &probe, "open", &secret]);
    assert_eq!(open(&daemon).status.code(), Some(128 + 9), "denied (killed on this backend) before the grant");
    let granted = daemon.cli(&["grant", "coder", "--open", &secret, "--ttl", "5m", "--reason", "survives"]);
    let grant_id = text(&granted).split_whitespace().next().unwrap().to_string();
    let stopped = daemon.cli(&["run", "--identity", "coder", "--", &tool, "marker", &marker]);
    assert_eq!(stopped.status.code(), Some(128 + 9), "step-up stops the tool");
    std::thread::sleep(Duration::from_millis(300));
    let request = json_field(&text(&daemon.cli(&["--json", "approvals"])), "id").expect("a pending request");

    daemon.kill_hard();
    daemon.spawn();
    let grants = text(&daemon.cli(&["grants"]));
    assert!(grants.contains(&grant_id) && grants.contains("survives"), "the grant is back: {grants}");
    assert!(text(&open(&daemon)).contains("ok KEY"), "and in force in the kernel");
    let approvals = text(&daemon.cli(&["--json", "approvals"]));
    assert!(approvals.contains(&request) && approvals.contains("\"pending\""), "the request still waits: {approvals}");
    assert!(text(&daemon.cli(&["approve", &request])).contains("approved"));
    let retry = daemon.cli(&["run", "--identity", "coder", "--", &tool, "marker", &marker]);
    assert_eq!(retry.status.code(), Some(0), "approved after the restart: {}", text(&retry));
}

#[test]
fn revoke_takes_effect_before_the_command_returns() {
    let scratch = TestDir::new("revoke-data");
    let tool = scratch.path("bin/tool");
    let daemon = Daemon::start("revoke", vec![policy(&scratch, &tool, "kill")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let go = scratch.path("go");
    let agent = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "run", "--identity", "coder", "--"])
        .arg(probe_path())
        .args(["connect-twice", &addr, &go])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _first = accept_within(&listener, EVENT_TIMEOUT);
    let revoked = daemon.cli(&["revoke", "coder"]);
    assert_eq!(revoked.status.code(), Some(0), "{}", text(&revoked));
    std::fs::write(&go, "").unwrap();
    let output = agent.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().collect::<Vec<_>>(), vec!["ok connected", "err 1"]);
    let released = daemon.cli(&["release", "coder"]);
    assert_eq!(released.status.code(), Some(0), "{}", text(&released));
    let after = daemon.cli(&["run", "--identity", "coder", "--", "/bin/true"]);
    assert_eq!(after.status.code(), Some(0), "released: {}", text(&after));
}

#[test]
fn delegation_only_narrows_and_revoking_the_delegator_revokes_the_delegate() {
    let scratch = TestDir::new("delegation-data");
    let secret = scratch.file("secret/key", "KEY");
    let secret_dir = scratch.0.join("secret").display().to_string();
    let policy = write_policy(
        &scratch,
        "policy.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: delegation\nspec:\n  identities:\n    - name: planner\n      owner: alice@example.com\n      files:\n        - {{ id: secret, path: {secret_dir}/, action: deny }}\n    - name: coder\n      delegatedBy: planner\n      files:\n        - {{ id: key-ok, path: {secret}, action: allow }}\n"
        ),
    );
    let daemon = Daemon::start("delegation", vec![policy]);
    let mut events = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "--json", "events", "--follow", "--identity", "coder"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = secret.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            // The file event (the exec event names the secret too, in the command line).
            if line.contains(&wanted) && line.contains("\"kind\":\"file\"") {
                let _ = tx.send(line);
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let probe = probe_path().display().to_string();
    let run = daemon.cli(&["run", "--identity", "coder", "--", &probe, "open", &secret]);
    assert!(!text(&run).contains("KEY"), "its own allow does not reach past the delegator's deny: {}", text(&run));
    let event = rx.recv_timeout(Duration::from_secs(10)).expect("deny event");
    assert!(event.contains("\"delegation_chain\":\"alice@example.com > planner > coder\""), "{event}");
    assert!(event.contains("\"rule_id\":\"planner/secret\""), "{event}");
    let _ = events.kill();

    let revoked = daemon.cli(&["revoke", "planner"]);
    assert!(text(&revoked).contains("with 1 delegated"), "{}", text(&revoked));
    let after = daemon.cli(&["run", "--identity", "coder", "--", "/bin/true"]);
    assert_eq!(after.status.code(), Some(128 + 9), "the delegate is revoked with its delegator: {}", text(&after));
}

#[test]
fn run_delegated_by_narrows_a_launch_to_what_the_delegator_allows() {
    let scratch = TestDir::new("run-delegation-data");
    let secret = scratch.file("secret/key", "KEY");
    let secret_dir = scratch.0.join("secret").display().to_string();
    let policy = write_policy(
        &scratch,
        "policy.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: d\nspec:\n  identities:\n    - name: planner\n      owner: alice@example.com\n      files:\n        - {{ id: secret, path: {secret_dir}/, action: deny }}\n    - name: coder\n"
        ),
    );
    let daemon = Daemon::start("run-delegation", vec![policy]);
    let probe = probe_path().display().to_string();
    let alone = daemon.cli(&["run", "--identity", "coder", "--", &probe, "open", &secret]);
    assert!(text(&alone).contains("ok KEY"), "coder alone may: {}", text(&alone));
    let delegated =
        daemon.cli(&["run", "--identity", "coder", "--delegated-by", "planner", "--", &probe, "open", &secret]);
    assert!(!text(&delegated).contains("KEY"), "delegated from planner it may not: {}", text(&delegated));
    let revoked = daemon.cli(&["revoke", "planner"]);
    assert!(text(&revoked).contains("with 1 delegated"), "{}", text(&revoked));
}
