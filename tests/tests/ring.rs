//! A flooded ring buffer: events are dropped and counted, never blocking and
//! never weakening enforcement.

use rtid_common::EventKind;
use rtid_tests::*;
use rtid_userspace::loader::LoadOptions;

#[test]
fn flooded_ring_counts_drops_and_enforcement_holds() {
    let dir = TestDir::new("flood");
    let noisy = dir.file("noisy", "x");
    let secret = dir.file("secret/token", "s3cret");
    let mut spec = IdentitySpec::new("flooder");
    spec.audit = AuditLevel::All;
    spec.files = vec![PathRuleSpec::file(
        "secret",
        PathPattern::Directory(format!("{}/secret/", dir.0.display())),
        Verdict::Deny,
    )];
    // A ring of 16 KiB holds a few dozen events.
    let options = LoadOptions { ring_bytes: 16 * 1024, ..LoadOptions::default() };
    let mut harness = Harness::start_with(vec![spec], options);

    let flood = harness.probe_as("flooder", &["open-many", "2000", &noisy]);
    assert_eq!(flood.stdout.trim(), "ok opened 2000", "{flood:?}");
    let drops = harness.kernel.counters().unwrap().ring_full_drops;
    assert!(drops > 0, "a full ring must count drops");

    // With the ring still full, a denied open is still killed.
    let run = harness.probe_as("flooder", &["open", &secret]);
    assert!(run.killed(), "{run:?}");
    assert!(!run.stdout.contains("s3cret"));
    assert!(harness.kernel.counters().unwrap().ring_full_drops > drops, "the kill's event was dropped and counted too");

    // Draining the ring makes room again.
    harness.events.drain();
    let after = harness.probe_as("flooder", &["open", &noisy]);
    assert!(after.succeeded());
    harness.expect_event("open after drain", |e| e.kind == EventKind::FileOpen as u8 && e.tgid == after.pid);
}
