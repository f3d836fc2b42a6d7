//! Event streams for security teams, end to end on the real daemon: every
//! field of provenance on real processes, the same events in rtid's JSON and
//! in OCSF (checked by the OCSF schema models), four sinks at once with one of
//! them dead, the hash-chained audit trail, /metrics checked by promtool, and
//! the per-identity cap.

use std::time::{Duration, Instant};

use rtid_tests::{daemon::*, peers::*, *};
use serde_json::Value;

/// Lines of a JSON-lines file that parse.
fn json_lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits until `path` holds at least `count` JSON lines matching `wanted`.
fn wait_for_lines(path: &str, count: usize, what: &str, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let matching: Vec<Value> = json_lines(path).into_iter().filter(&wanted).collect();
        if matching.len() >= count {
            return matching;
        }
        assert!(Instant::now() < deadline, "{what}: {} of {count} lines in {path} after 30s", matching.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent of identity `streamer` opening `path` `count` times.
fn open_many(daemon: &Daemon, count: impl ToString, path: &str) -> std::process::Output {
    let count = count.to_string();
    daemon.cli(&["run", "--identity", "streamer", "--", probe_path().to_str().unwrap(), "open-many", &count, path])
}

fn status(daemon: &Daemon) -> Value {
    let output = daemon.cli(&["--json", "status"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

fn sink<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|sink| sink["name"] == name))
        .unwrap_or_else(|| panic!("no sink {name} in {status}"))
}

fn streamer_policy(secret_dir: &str, denied_port: u16, extra: &str) -> String {
    format!(
        "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: streams\nspec:\n  identities:\n    - name: streamer\n      owner: alice@example.com\n      purpose: \"stream test\"\n      fileDenyFallback: flag\n      defaults: {{ file: allow, network: allow, exec: allow }}\n{extra}      files:\n        - {{ id: no-secret, path: {secret_dir}/, action: deny }}\n      network:\n        - {{ id: no-port, cidr: 127.0.0.1/32, ports: [\"{denied_port}\"], action: deny }}\n"
    )
}

#[test]
fn four_sinks_carry_every_field_and_a_dead_one_loses_only_its_own() {
    let scratch = TestDir::new("streams-data");
    let secret_dir = scratch.path("secret");
    let secret = scratch.file("secret/key", "PRIVATE");
    let plain = scratch.file("plain.txt", "hello");
    let denied_port = free_port();
    let mut nats = NatsServer::start(&scratch.0.join("nats"));
    let http_port = free_port();
    let token = "s3cret-token";
    let token_file = scratch.file("token", &format!("{token}\n"));
    let (json_file, ocsf_file, audit_file) =
        (scratch.path("out/events.jsonl"), scratch.path("out/events.ocsf.jsonl"), scratch.path("audit/audit.log"));
    let config = scratch.file(
        "config.yaml",
        &format!(
            "nodeName: test-node\nsinks:\n  - {{ type: file, path: {json_file}, queue: 65536 }}\n  - {{ type: file, path: {ocsf_file}, format: ocsf, queue: 65536 }}\n  - {{ type: http, tokenFile: {token_file}, queue: 64 }}\n  - {{ type: nats, url: \"{}\", stream: RTIDTEST, queue: 1024 }}\nhttp: {{ listen: \"127.0.0.1:{http_port}\" }}\naudit: {{ path: {audit_file}, flushInterval: 100ms }}\n",
            nats.url()
        ),
    );
    let policy =
        write_policy(&scratch, "policy.yaml", &streamer_policy(&secret_dir, denied_port, "      audit: all\n"));
    let daemon = Daemon::start_with("streams", vec![policy], vec!["--config".into(), config]);

    // The endpoint wants the bearer token.
    assert_eq!(http_fetch(http_port, "/events", &[]).0, 401, "no token");
    assert_eq!(http_fetch(http_port, "/events", &[("Authorization", "Bearer wrong")]).0, 401, "wrong token");
    // Nor can an agent reach the endpoint at all, token or not: the kernel refuses the connect.
    let probe = probe_path().display().to_string();
    let reach =
        daemon.cli(&["run", "--identity", "streamer", "--", &probe, "connect", &format!("127.0.0.1:{http_port}")]);
    assert!(text(&reach).contains("err 1"), "an agent's connect to the daemon's endpoint gets EPERM: {}", text(&reach));
    let bearer = format!("Bearer {token}");
    let mut reader = http_get(http_port, "/events", &[("Authorization", &bearer)]);
    // A consumer that connects and never reads: its queue fills, nobody else waits.
    let _stalled = http_get(http_port, "/events", &[("Authorization", &bearer)]);
    std::thread::sleep(Duration::from_millis(300));

    // A real agent: a shell under rtid run whose child shell reads the
    // secret and lingers, so /proc still answers when the daemon asks.
    let script = format!("sh -c 'exec 3< {secret}; sleep 1'; exit 0");
    let run = daemon.cli(&[
        "run",
        "--identity",
        "streamer",
        "--owner",
        "bob@example.com",
        "--purpose",
        "nightly refactor",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(run.status.code(), Some(0), "flagged, not killed: {}", text(&run));
    let is_secret_read = |event: &Value| event["kind"] == "file" && event["path"] == secret.as_str();
    let event = wait_for_lines(&json_file, 1, "the flagged read in the JSON file sink", is_secret_read).remove(0);

    // Provenance: who acted, for whom, under which rule, on which node.
    assert_eq!(event["schema"], "rtid.event/v1");
    assert_eq!(
        (event["verdict"].as_str(), event["outcome"].as_str()),
        (Some("deny"), Some("flagged_instead")),
        "{event}"
    );
    assert_eq!(event["identity"], "streamer");
    assert_eq!(event["owner"], "bob@example.com", "rtid run --owner names the launch: {event}");
    assert_eq!(event["purpose"], "nightly refactor");
    assert!(event["delegation_chain"].as_str().is_some_and(|chain| chain.ends_with("streamer")), "{event}");
    assert_eq!(event["rule_id"], "no-secret");
    assert!(event["rule"].as_str().is_some_and(|rule| rule.contains(&secret_dir)), "{event}");
    assert_eq!(event["node"], "test-node");
    assert!(event["seq"].as_u64().is_some_and(|seq| seq > 0), "{event}");
    let time = humantime_like(event["time"].as_str().unwrap_or_default());
    assert!(time, "RFC 3339 wall-clock time: {event}");
    let process = &event["process"];
    assert!(process["exe"].as_str().is_some_and(|exe| exe.contains("sh")), "{event}");
    assert_eq!(process["cmdline"][0], "sh", "{event}");
    assert!(process["cmdline"][2].as_str().is_some_and(|command| command.contains(&secret)), "{event}");
    assert_eq!(process["unavailable"], serde_json::json!([]), "{event}");
    assert!(process["cwd"].as_str().is_some_and(|cwd| cwd.starts_with('/')), "{event}");
    assert_eq!(process["user"], "root");
    let ancestry = process["ancestry"].as_array().expect("ancestry");
    assert_eq!(ancestry[0]["identity"], "streamer", "the shell carries the identity: {event}");
    assert_eq!(ancestry[0]["pid"], event["parent_tgid"]);
    assert!(
        ancestry.last().is_some_and(|outside| outside["identity"].is_null()),
        "ends at the first process outside: {event}"
    );
    assert!(
        event["process_key"].as_str().is_some_and(|key| key.starts_with(&format!("{}:", event["tgid"]))),
        "{event}"
    );

    // The same event on the HTTP stream and in NATS JetStream, and in OCSF.
    let seq = event["seq"].clone();
    let streamed = read_json_lines(&mut reader, Duration::from_secs(10), 1, |line| line["seq"] == seq);
    assert_eq!(streamed.len(), 1, "the HTTP stream carries the event");
    assert_eq!(streamed[0]["path"], secret.as_str());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_nats = None;
    while in_nats.is_none() && Instant::now() < deadline {
        let stored = nats.stream_messages("RTIDTEST");
        in_nats = (1..=stored)
            .map(|n| nats.stream_message("RTIDTEST", n))
            .find(|(_, body)| body.contains(&format!("\"seq\":{seq},")));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (subject, _) = in_nats.expect("the event in the NATS stream");
    assert_eq!(subject, "rtid.events.test-node.file");
    let ocsf = wait_for_lines(&ocsf_file, 1, "the read in OCSF", |line| {
        line["class_uid"] == 1001 && line.to_string().contains(&secret)
    });
    assert!(!ocsf.is_empty());
    ocsf_validate(&ocsf_file).unwrap_or_else(|problems| panic!("OCSF output fails the schema models:\n{problems}"));

    // NATS dies mid-stream; a flood follows. Enforcement and the other sinks carry on.
    nats.stop();
    let flood = 20_000;
    let run = open_many(&daemon, flood, &plain);
    assert!(text(&run).contains(&format!("opened {flood}")), "{}", text(&run));
    let refused = daemon.cli(&[
        "run",
        "--identity",
        "streamer",
        "--",
        probe_path().to_str().unwrap(),
        "connect",
        &format!("127.0.0.1:{denied_port}"),
    ]);
    assert!(
        text(&refused).contains("err 1"),
        "connect still refused with EPERM while a sink is dead: {}",
        text(&refused)
    );
    // The burst is larger than the kernel ring (8 MiB, about 13,000 events):
    // what the ring could not hold is counted there; everything that left
    // the ring reaches the file sink, none lost on the way.
    let is_plain_open = |line: &Value| line["kind"] == "file" && line["path"] == plain.as_str();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (plain_opens, ring_drops) = loop {
        let opens: Vec<Value> = json_lines(&json_file).into_iter().filter(is_plain_open).collect();
        let ring_drops = status(&daemon)["ring_full_drops"].as_u64().unwrap_or(0) as usize;
        if opens.len() + ring_drops >= flood || Instant::now() > deadline {
            break (opens, ring_drops);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        plain_opens.len() + ring_drops >= flood,
        "every open is in the file sink or counted as a ring drop: {} + {ring_drops} < {flood}",
        plain_opens.len()
    );
    // The probe is gone by now: its binary is still known from its exec event.
    let last = plain_opens.last().unwrap();
    assert!(last["process"]["exe"].as_str().is_some_and(|exe| exe.ends_with("rtid-probe")), "{last}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = status(&daemon);
        let nats_lost = sink(&report, "nats:RTIDTEST")["dropped"].as_u64().unwrap_or(0);
        let http_lost = sink(&report, "http")["dropped"].as_u64().unwrap_or(0);
        if (nats_lost > 0 && http_lost > 0) || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        sink(&report, "nats:RTIDTEST")["dropped"].as_u64().unwrap_or(0) > 0,
        "the dead NATS sink counts its losses: {report}"
    );
    assert!(
        sink(&report, "http")["dropped"].as_u64().unwrap_or(0) > 0,
        "the stalled HTTP client's losses are counted: {report}"
    );
    assert_eq!(sink(&report, &format!("file:{json_file}"))["dropped"], 0, "the file sink lost nothing: {report}");

    // /metrics is a valid Prometheus page with the per-sink figures.
    let (code, page) = http_fetch(http_port, "/metrics", &[]);
    assert_eq!(code, 200);
    promtool_check(&page).unwrap_or_else(|problem| panic!("promtool check metrics: {problem}\n{page}"));
    assert!(page.contains("rtid_sink_dropped_total") && page.contains("nats:RTIDTEST"), "{page}");
    assert!(page.contains("rtid_events_total"), "{page}");

    // The audit trail holds the decisions, chained; an edit is caught.
    std::thread::sleep(Duration::from_millis(500));
    let audit = json_lines(&audit_file);
    assert!(
        audit.iter().any(|record| record["kind"] == "decision" && record["body"]["path"] == secret.as_str()),
        "the flagged read is audited"
    );
    assert!(
        audit.iter().any(|record| record["kind"] == "change" && record["body"]["action"] == "label_child"),
        "the launch's label is audited"
    );
    let verified = daemon.cli(&["audit", "verify", &audit_file]);
    assert_eq!(verified.status.code(), Some(0), "an untouched trail verifies: {}", text(&verified));
    let tampered = scratch.path("tampered.log");
    let original = std::fs::read_to_string(&audit_file).unwrap();
    std::fs::write(&tampered, original.replacen("flagged_instead", "allowed", 1)).unwrap();
    let caught = daemon.cli(&["audit", "verify", &tampered]);
    assert_eq!(caught.status.code(), Some(1), "{}", text(&caught));
    assert!(text(&caught).to_lowercase().contains("edited"), "names the edit: {}", text(&caught));
}

#[test]
fn a_flooding_identity_is_capped_and_what_is_held_back_is_summarised() {
    let scratch = TestDir::new("throttle-data");
    let plain = scratch.file("plain.txt", "hello");
    let out = scratch.path("events.jsonl");
    let config = scratch.file(
        "config.yaml",
        &format!(
            "sinks:\n  - {{ type: file, path: {out}, queue: 65536 }}\nthrottle: {{ perIdentityPerSecond: 200 }}\n"
        ),
    );
    let policy = write_policy(
        &scratch,
        "policy.yaml",
        &streamer_policy(&scratch.path("secret"), free_port(), "      audit: all\n"),
    );
    let daemon = Daemon::start_with("throttle", vec![policy], vec!["--config".into(), config]);

    let flood: u64 = 5_000;
    let run = open_many(&daemon, flood, &plain);
    assert!(text(&run).contains(&format!("opened {flood}")), "every open succeeds, capped or not: {}", text(&run));
    // The summaries come once the capped seconds are over.
    wait_for_lines(&out, 1, "a suppressed summary", |line| line["kind"] == "suppressed");
    std::thread::sleep(Duration::from_millis(2500));
    let lines = json_lines(&out);
    let sent = lines.iter().filter(|line| line["kind"] == "file" && line["path"] == plain.as_str()).count() as u64;
    let summaries: Vec<&Value> = lines.iter().filter(|line| line["kind"] == "suppressed").collect();
    let held_back: u64 = summaries.iter().map(|line| line["suppressed"].as_u64().unwrap_or(0)).sum();
    assert!(sent < flood, "the cap held events back: {sent} sent");
    assert!(held_back > 0, "{summaries:?}");
    assert!(sent + held_back >= flood, "nothing vanished: {sent} sent + {held_back} summarised < {flood}");
    assert!(
        summaries[0]["rule"].as_str().is_some_and(|text| text.contains("events suppressed for identity streamer")),
        "{:?}",
        summaries[0]
    );
    assert_eq!(summaries[0]["identity"], "streamer");
    let report = status(&daemon);
    assert_eq!(report["events_suppressed"].as_u64(), Some(held_back), "{report}");
}

/// `2026-12-01T19:42:52.123456789Z`-shaped.
fn humantime_like(text: &str) -> bool {
    text.len() >= 20 && text.as_bytes()[4] == b'-' && text.as_bytes()[10] == b'T' && text.ends_with('Z')
}

#[test]
fn container_and_pod_come_from_the_cgroup_a_process_runs_in() {
    let scratch = TestDir::new("container-data");
    let secret = scratch.file("secret/key", "PRIVATE");
    let out = scratch.path("events.jsonl");
    let ocsf = scratch.path("events.ocsf.jsonl");
    let config = scratch.file(
        "config.yaml",
        &format!("sinks:\n  - {{ type: file, path: {out} }}\n  - {{ type: file, path: {ocsf}, format: ocsf }}\n"),
    );
    let policy = write_policy(&scratch, "policy.yaml", &streamer_policy(&scratch.path("secret"), free_port(), ""));
    let daemon = Daemon::start_with("container", vec![policy], vec!["--config".into(), config]);

    // A kubelet-style (systemd driver) cgroup for one container of one pod.
    let pod_uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let container_id = "4c0ffee0".repeat(8);
    let root = rtid_userspace::loader::cgroup::cgroup2_root().expect("cgroup2 mounted");
    let top = root.join(format!("rtid-test-kubepods-{}.slice", std::process::id()));
    let pod = top.join(format!("kubepods-burstable-pod{}.slice", pod_uid.replace('-', "_")));
    let container = pod.join(format!("cri-containerd-{container_id}.scope"));
    std::fs::create_dir_all(&container).expect("create the container's cgroup");
    struct RemoveCgroups(Vec<std::path::PathBuf>);
    impl Drop for RemoveCgroups {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    let _cleanup = RemoveCgroups(vec![container.clone(), pod, top]);

    // The agent's shell joins the container's cgroup; its child, born there
    // as a container's processes are, reads the secret.
    let script =
        format!("echo $$ > {}; sh -c 'exec 3< {secret}; sleep 1'; exit 0", container.join("cgroup.procs").display());
    let run = daemon.cli(&["run", "--identity", "streamer", "--", "/bin/sh", "-c", &script]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let event = wait_for_lines(&out, 1, "the read from inside the container", |line| {
        line["kind"] == "file" && line["path"] == secret.as_str()
    })
    .remove(0);
    assert_eq!(event["process"]["container_id"], container_id.as_str(), "{event}");
    assert_eq!(event["process"]["pod_uid"], pod_uid, "{event}");
    // Flagged instead of denied (this backend cannot refuse an open): a Detection Finding.
    let finding = wait_for_lines(&ocsf, 1, "the read in OCSF", |line| {
        line["class_uid"] == 2004 && line.to_string().contains(&secret)
    })
    .remove(0);
    assert!(finding.to_string().contains(&format!("\"uid\":\"{container_id}\"")), "the container is named: {finding}");
    assert!(finding.to_string().contains(&format!("\"pod_uuid\":\"{pod_uid}\"")), "the pod is named: {finding}");
    ocsf_validate(&ocsf).unwrap_or_else(|problems| panic!("OCSF output fails the schema models:\n{problems}"));
}

#[test]
fn the_stdout_sink_writes_ocsf_lines_for_the_log_pipeline() {
    let scratch = TestDir::new("stdout-data");
    let secret = scratch.file("secret/key", "PRIVATE");
    let config = scratch.file("config.yaml", "nodeName: node-b\nsinks:\n  - { type: stdout, format: ocsf }\n");
    let policy = write_policy(&scratch, "policy.yaml", &streamer_policy(&scratch.path("secret"), free_port(), ""));
    let daemon = Daemon::start_with("stdout", vec![policy], vec!["--config".into(), config]);
    let script = format!("exec 3< {secret}; sleep 1");
    let run = daemon.cli(&["run", "--identity", "streamer", "--", "/bin/sh", "-c", &script]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let finding = wait_for_lines(&daemon.stdout_path(), 1, "the flagged read on stdout", |line| {
        line["class_uid"] == 2004 && line.to_string().contains(&secret)
    })
    .remove(0);
    assert_eq!(finding["device"]["hostname"], "node-b", "{finding}");
    ocsf_validate(&daemon.stdout_path())
        .unwrap_or_else(|problems| panic!("stdout OCSF fails the schema models:\n{problems}"));
}
