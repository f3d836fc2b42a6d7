//! Network rules: cgroup socket hooks refuse connects and sends with EPERM,
//! synchronously, for tagged processes only. AF_UNIX paths are judged at
//! syscall entry on this backend (kill or flag).

use std::{
    net::{TcpListener, UdpSocket},
    os::unix::net::UnixListener,
};

use rtid_common::{AF_INET, AF_INET6, EventKind, Outcome, protocol};
use rtid_tests::*;

const EPERM: i32 = 1;

fn listener_v4() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind v4");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

fn net_identity(denied_port: u16) -> IdentitySpec {
    let mut spec = IdentitySpec::new("netagent");
    spec.defaults.network = Verdict::Allow;
    let mut deny_port = NetRuleSpec::cidr(
        "deny-port",
        "127.0.0.1".parse().unwrap(),
        32,
        vec![(denied_port, denied_port)],
        Verdict::Deny,
    );
    deny_port.protocols = protocol::TCP;
    spec.network = vec![
        deny_port,
        NetRuleSpec::cidr(
            "deny-v6-loopback",
            "::1".parse().unwrap(),
            128,
            vec![(denied_port, denied_port)],
            Verdict::Deny,
        ),
        NetRuleSpec::cidr("deny-cidr", "127.0.9.0".parse().unwrap(), 24, vec![], Verdict::Deny),
    ];
    spec
}

fn is_net_event(event: &rtid_common::Event, pid: u32, kind: EventKind) -> bool {
    event.kind == kind as u8 && event.tgid == pid
}

#[test]
fn connect_to_a_denied_port_fails_with_eperm_and_another_port_works() {
    let (_denied_listener, denied) = listener_v4();
    let (_open_listener, open) = listener_v4();
    let mut harness = Harness::start(vec![net_identity(denied)]);

    let refused = harness.probe_as("netagent", &["connect", &format!("127.0.0.1:{denied}")]);
    assert_eq!(refused.errno(), Some(EPERM), "{refused:?}");
    let allowed = harness.probe_as("netagent", &["connect", &format!("127.0.0.1:{open}")]);
    assert!(allowed.succeeded(), "{allowed:?}");
    let untagged = harness.probe_untagged(&["connect", &format!("127.0.0.1:{denied}")]);
    assert!(untagged.succeeded(), "untagged processes are not judged: {untagged:?}");

    let rule = harness.rule_id("netagent", "deny-port");
    let event = harness
        .expect_event("denied connect", |e| is_net_event(e, refused.pid, EventKind::Connect) && e.rule_id == rule);
    assert_eq!(event.outcome, Outcome::Blocked as u8);
    assert_eq!(event.errno, EPERM);
    assert_eq!(event.net.port, denied);
    assert_eq!(event.net.family, AF_INET);
    assert_eq!(&event.net.addr[12..], &[127, 0, 0, 1]);
    assert_eq!(event.backend, rtid_common::Backend::CgroupSock as u8);
}

#[test]
fn ipv6_loopback_rule() {
    let listener = TcpListener::bind("[::1]:0").expect("bind v6");
    let port = listener.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![net_identity(port)]);
    let refused = harness.probe_as("netagent", &["connect", &format!("[::1]:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "{refused:?}");
    let rule = harness.rule_id("netagent", "deny-v6-loopback");
    let event =
        harness.expect_event("v6 deny", |e| is_net_event(e, refused.pid, EventKind::Connect) && e.rule_id == rule);
    assert_eq!(event.net.family, AF_INET6);
    assert_eq!(event.net.addr, std::net::Ipv6Addr::LOCALHOST.octets());
}

#[test]
fn v4_mapped_address_is_judged_as_ipv4() {
    let listener = TcpListener::bind("[::]:0").expect("bind dual-stack");
    let port = listener.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![net_identity(port)]);
    let refused = harness.probe_as("netagent", &["connect", &format!("[::ffff:127.0.0.1]:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "v4-mapped must hit the IPv4 rule: {refused:?}");
    let rule = harness.rule_id("netagent", "deny-port");
    harness.expect_event("v4-mapped deny", |e| is_net_event(e, refused.pid, EventKind::Connect) && e.rule_id == rule);
}

#[test]
fn cidr_rule_covers_its_block() {
    let listener = TcpListener::bind("127.0.9.7:0").expect("bind 127.0.9.7");
    let port = listener.local_addr().unwrap().port();
    let outside = TcpListener::bind("127.0.10.7:0").expect("bind 127.0.10.7");
    let outside_port = outside.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![net_identity(1)]);
    let refused = harness.probe_as("netagent", &["connect", &format!("127.0.9.7:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "{refused:?}");
    let allowed = harness.probe_as("netagent", &["connect", &format!("127.0.10.7:{outside_port}")]);
    assert!(allowed.succeeded(), "{allowed:?}");
}

#[test]
fn udp_sendto_a_denied_address_fails() {
    let receiver = UdpSocket::bind("127.0.9.1:0").expect("bind udp");
    let port = receiver.local_addr().unwrap().port();
    let open_receiver = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let open_port = open_receiver.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![net_identity(1)]);
    let refused = harness.probe_as("netagent", &["sendto", &format!("127.0.9.1:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "{refused:?}");
    let allowed = harness.probe_as("netagent", &["sendto", &format!("127.0.0.1:{open_port}")]);
    assert!(allowed.succeeded(), "{allowed:?}");
    let rule = harness.rule_id("netagent", "deny-cidr");
    let event =
        harness.expect_event("udp send deny", |e| is_net_event(e, refused.pid, EventKind::Send) && e.rule_id == rule);
    assert_eq!(event.net.protocol, protocol::UDP);
    assert_eq!(event.net.port, port);
}

#[test]
fn tcp_only_rule_does_not_match_udp() {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let port = receiver.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![net_identity(port)]);
    let sent = harness.probe_as("netagent", &["sendto", &format!("127.0.0.1:{port}")]);
    assert!(sent.succeeded(), "deny-port is tcp only: {sent:?}");
}

#[test]
fn unix_socket_rule() {
    let dir = TestDir::new("unix");
    let denied = dir.path("docker.sock");
    let open = dir.path("ok.sock");
    let _denied_listener = UnixListener::bind(&denied).expect("bind unix");
    let _open_listener = UnixListener::bind(&open).expect("bind unix");
    let mut spec = IdentitySpec::new("netagent");
    spec.network = vec![NetRuleSpec::unix("docker-sock", &denied, Verdict::Deny)];
    let mut harness = Harness::start(vec![spec]);
    let allowed = harness.probe_as("netagent", &["unix-connect", &open]);
    assert!(allowed.succeeded(), "{allowed:?}");
    let refused = harness.probe_as("netagent", &["unix-connect", &denied]);
    assert!(refused.killed(), "a unix deny falls back to kill on this backend: {refused:?}");
    let rule = harness.rule_id("netagent", "docker-sock");
    let event =
        harness.expect_event("unix deny", |e| is_net_event(e, refused.pid, EventKind::Connect) && e.rule_id == rule);
    assert_eq!(event_path(&event), denied);
    assert_ne!(event.flags & rtid_common::event_flags::UNIX_SOCKET, 0);
}

#[test]
fn a_kill_rule_refuses_the_call_and_the_process_dies_before_it_returns() {
    // The cgroup hooks refuse the call; SIGKILL is delivered at the syscall's
    // exit (these hooks may not signal on 6.1 and 6.12), so the listener never
    // sees a connection and the datagram never arrives.
    let (listener, port) = listener_v4();
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_port = receiver.local_addr().unwrap().port();
    let mut spec = IdentitySpec::new("netagent");
    spec.defaults.network = Verdict::Allow;
    spec.network = vec![
        NetRuleSpec::cidr("kill-tcp", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Kill),
        NetRuleSpec::cidr("kill-udp", "127.0.0.1".parse().unwrap(), 32, vec![(udp_port, udp_port)], Verdict::Kill),
    ];
    let mut harness = Harness::start(vec![spec]);

    let tcp = harness.probe_as("netagent", &["connect", &format!("127.0.0.1:{port}")]);
    assert!(tcp.killed(), "{tcp:?}");
    assert_eq!(tcp.stdout, "", "killed before it could report the call's result");
    let udp = harness.probe_as("netagent", &["sendto", &format!("127.0.0.1:{udp_port}")]);
    assert!(udp.killed(), "{udp:?}");

    // Both probes are dead, so nothing more can arrive: the effect is judged
    // by what the peers hold now.
    listener.set_nonblocking(true).expect("nonblocking listener");
    assert_eq!(listener.accept().map(|_| ()).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    receiver.set_nonblocking(true).expect("nonblocking receiver");
    let mut buffer = [0u8; 64];
    assert_eq!(receiver.recv(&mut buffer).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);

    let rule = harness.rule_id("netagent", "kill-tcp");
    let event =
        harness.expect_event("killed connect", |e| is_net_event(e, tcp.pid, EventKind::Connect) && e.rule_id == rule);
    assert_eq!(event.outcome, Outcome::Killed as u8);
    let rule = harness.rule_id("netagent", "kill-udp");
    let event = harness.expect_event("killed send", |e| is_net_event(e, udp.pid, EventKind::Send) && e.rule_id == rule);
    assert_eq!(event.outcome, Outcome::Killed as u8);
}
