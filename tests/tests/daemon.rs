//! The daemon and CLI end to end: the real `rtid` binary, a control socket,
//! pinned programs that outlive a killed daemon, and policy applied live.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rtid_tests::{daemon::*, *};

#[test]
fn agent_denied_apply_live_restart_adopts_pins_and_agents_cannot_use_the_api() {
    let scratch = TestDir::new("daemon-data");
    let secret_dir = scratch.0.join("secret").display().to_string();
    let secret = scratch.file("secret/key", "PRIVATE-KEY");
    let policy = write_policy(&scratch, "policy.yaml", &coder_policy(&secret_dir, "deny"));
    let mut daemon = Daemon::start("main", vec![policy.clone()]);

    // An agent run through the CLI is killed before it reads the key.
    let run = daemon.cli(&["run", "--identity", "coder", "--", "/bin/cat", &secret]);
    assert!(!text(&run).contains("PRIVATE-KEY"), "the key must never be printed: {}", text(&run));
    assert_eq!(run.status.code(), Some(128 + 9), "rtid run exits 128+SIGKILL: {}", text(&run));

    // A long-running agent for the live-apply and restart checks.
    let go = scratch.path("go");
    let waiter = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; {probe} open {secret}; exit 0",
        probe = probe_path().display()
    );
    let agent = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "run", "--identity", "coder", "--", "/bin/sh", "-c", &waiter])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start agent");
    std::thread::sleep(Duration::from_millis(300));

    // A labeled process cannot use the API.
    let inside = daemon.cli(&[
        "run",
        "--identity",
        "coder",
        "--",
        rtid_binary().to_str().unwrap(),
        "--socket",
        &daemon.socket(),
        "label",
        "--pid",
        "1",
        "--identity",
        "coder",
    ]);
    // The kernel refuses the connect itself (rule rtid/control-socket): EPERM
    // under BPF LSM, SIGKILL at the connect on the fallback; the daemon never
    // reads a request.
    assert!(refused_to_an_identity(&inside), "an agent is refused at connect: {} ({:?})", text(&inside), inside.status);

    // Three errors: all reported with lines; nothing applied.
    let broken = write_policy(
        &scratch,
        "broken.yaml",
        "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: broken\nspec:\n  identities:\n    - name: coder\n      files:\n        - { id: a, path: relative/path, action: deny }\n        - { id: b, path: /x/, action: maybe }\n      network:\n        - { id: c, cidr: 10.0.0.0/33, action: deny }\n",
    );
    let apply = daemon.cli(&["policy", "apply", &broken]);
    assert_ne!(apply.status.code(), Some(0), "{}", text(&apply));
    let message = text(&apply);
    for line in ["broken.yaml:9:", "broken.yaml:10:", "broken.yaml:12:"] {
        assert!(message.contains(line), "missing {line} in: {message}");
    }

    // A second agent that acts only once the daemon is gone.
    let go_down = scratch.path("go-down");
    let later = format!(
        "while [ ! -e {go_down} ]; do sleep 0.05; done; {probe} open {secret}; exit 0",
        probe = probe_path().display()
    );
    let second = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "run", "--identity", "coder", "--", "/bin/sh", "-c", &later])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start second agent");
    std::thread::sleep(Duration::from_millis(300));

    // kill -9: the pinned programs keep enforcing while the daemon is down.
    daemon.kill_hard();
    std::fs::write(&go_down, "").unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("PRIVATE-KEY"),
        "still denied with the daemon down: {second:?}"
    );
    let while_down = Command::new(probe_path()).args(["open", &secret]).output().unwrap();
    assert!(String::from_utf8_lossy(&while_down.stdout).contains("PRIVATE-KEY"), "untagged still fine while down");

    // A new daemon adopts the pins: labels and state are back, events flow.
    daemon.spawn();
    let ps = daemon.cli(&["ps"]);
    assert!(text(&ps).contains("coder"), "labels are back after restart: {}", text(&ps));
    let mut events = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "--json", "events", "--follow", "--identity", "coder"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow events");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    let wanted = secret.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("\"verdict\":\"deny\"") && line.contains(&wanted) {
                let _ = found_tx.send(line);
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let third = daemon.cli(&["run", "--identity", "coder", "--", "/bin/cat", &secret]);
    assert!(!text(&third).contains("PRIVATE-KEY"));
    let event =
        found_rx.recv_timeout(Duration::from_secs(10)).expect("the deny arrives on `rtid events --follow --json`");
    assert!(event.contains("\"rule_id\":\"secret\"") && event.contains("\"identity\":\"coder\""), "{event}");
    let _ = events.kill();
    let _ = events.wait();

    // A valid apply turning the deny into an allow reaches the running agent.
    let relaxed = write_policy(&scratch, "relaxed.yaml", &coder_policy(&secret_dir, "allow"));
    let apply = daemon.cli(&["policy", "apply", &relaxed]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    std::fs::write(&go, "").unwrap();
    let output = agent.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("ok PRIVATE-KEY"),
        "the running agent is judged by the new policy: {:?}",
        output
    );
}

#[test]
fn the_embedded_default_stops_an_agent_reading_an_ssh_key_and_the_cli_explains_it() {
    // A temporary home under /home: the default policy's ~/ rules cover every home.
    let home = PathBuf::from(format!("/home/rtid-test-{}", std::process::id()));
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key = home.join(".ssh/id_rsa").display().to_string();
    std::fs::write(&key, "SSH-PRIVATE-KEY").unwrap();
    struct RemoveHome(PathBuf);
    impl Drop for RemoveHome {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveHome(home.clone());
    let daemon = Daemon::start("default", Vec::new());

    let status = daemon.cli(&["--json", "status"]);
    assert!(text(&status).contains("embedded default policy"), "{}", text(&status));

    let mut events = Command::new(rtid_binary())
        .args(["--socket", &daemon.socket(), "--json", "events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow events");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    let wanted = key.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            // The file event (the exec event names the key too, in the command line).
            if line.contains(&wanted) && line.contains("\"kind\":\"file\"") {
                let _ = found_tx.send(line);
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let run = daemon.cli(&["run", "--identity", "coder", "--", "/bin/cat", &key]);
    assert!(!text(&run).contains("SSH-PRIVATE-KEY"), "the key is never printed: {}", text(&run));
    assert_eq!(run.status.code(), Some(128 + 9), "killed on this host's fallback backend: {}", text(&run));
    let event = found_rx.recv_timeout(Duration::from_secs(10)).expect("the event reaches `rtid events --json`");
    assert!(event.contains("\"verdict\":\"deny\"") && event.contains("\"outcome\":\"killed\""), "{event}");
    let _ = events.kill();
    let _ = events.wait();

    // explain names the rule that decided, from the live maps.
    let explain = daemon.cli(&["policy", "explain", "--identity", "coder", "--open", &key]);
    let user = home.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text(&explain).contains(&format!("deny (by rule ssh-keys@{user}")), "{}", text(&explain));
    let explain_exec = daemon.cli(&["policy", "explain", "--identity", "coder", "--exec", "/usr/bin/ssh"]);
    assert!(text(&explain_exec).contains("step_up"), "{}", text(&explain_exec));

    // CLI odds and ends: checks without a daemon, completions, man page, ps.
    let dir = TestDir::new("cli");
    let bad = dir.file("bad.yaml", "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: x\nspec:\n  identities:\n    - name: a\n      files:\n        - { id: r, path: /x, action: nope }\n");
    let check = Command::new(rtid_binary()).args(["policy", "check", &bad]).output().unwrap();
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(text(&check).contains("bad.yaml:9: spec.identities[0].files[0].action"), "{}", text(&check));
    let shown = Command::new(rtid_binary()).args(["policy", "show", "--default"]).output().unwrap();
    assert!(text(&shown).contains("kind: AgentPolicy"));
    let completions = Command::new(rtid_binary()).args(["completions", "bash"]).output().unwrap();
    assert!(text(&completions).contains("rtid"));
    let man = Command::new(rtid_binary()).arg("man").output().unwrap();
    assert!(text(&man).contains(".TH"));
    let unreachable =
        Command::new(rtid_binary()).args(["--socket", "/nonexistent/rtid.sock", "status"]).output().unwrap();
    assert_eq!(unreachable.status.code(), Some(69), "{}", text(&unreachable));

    // --ttl: the identity expires; afterwards nothing runs under it.
    let short = daemon.cli(&["run", "--identity", "coder", "--owner", "bob", "--ttl", "1s", "--", "/bin/true"]);
    assert_eq!(short.status.code(), Some(0), "{}", text(&short));
    std::thread::sleep(Duration::from_millis(1300));
    let expired = daemon.cli(&["run", "--identity", "coder", "--", "/bin/true"]);
    assert_eq!(expired.status.code(), Some(128 + 9), "an expired identity's exec is killed: {}", text(&expired));
}

#[test]
fn sighup_reloads_and_sigterm_keeps_the_pins_unless_asked_to_remove_them() {
    let scratch = TestDir::new("daemon-signals");
    let secret_dir = scratch.0.join("secret").display().to_string();
    let secret = scratch.file("secret/key", "x");
    let policy = write_policy(&scratch, "policy.yaml", &coder_policy(&secret_dir, "deny"));
    let mut daemon = Daemon::start("signals", vec![policy.clone()]);
    let explain = |daemon: &Daemon| text(&daemon.cli(&["policy", "explain", "--identity", "coder", "--open", &secret]));
    assert!(explain(&daemon).contains("deny"), "{}", explain(&daemon));

    std::fs::write(&policy, coder_policy(&secret_dir, "flag")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !explain(&daemon).contains("flag") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {}", explain(&daemon));
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.cli(&["status"]);
    assert!(text(&status).contains("PROCESS_IDENTITY"), "status shows map fill: {}", text(&status));

    let stopped = daemon.signal(libc::SIGTERM);
    assert!(stopped.success(), "SIGTERM stops cleanly: {stopped:?}");
    assert!(
        daemon.pins.join("links").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false),
        "pins kept after SIGTERM"
    );

    daemon.extra = vec!["--unpin-on-exit".into()];
    daemon.spawn();
    let stopped = daemon.signal(libc::SIGTERM);
    assert!(stopped.success(), "{stopped:?}");
    assert!(!daemon.pins.exists(), "--unpin-on-exit removes the pins");
}
