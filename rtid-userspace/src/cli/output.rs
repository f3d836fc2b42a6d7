//! Printing daemon responses: aligned text for people, JSON with `--json`.

use std::process::ExitCode;

use crate::api::Response;

/// Prints a response; returns the exit code it implies.
pub fn print(response: &Response, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string(response) {
            Ok(line) => println!("{line}"),
            Err(error) => eprintln!("rtid: {error}"),
        }
        return if matches!(response, Response::Error { .. }) { ExitCode::from(1) } else { ExitCode::SUCCESS };
    }
    match response {
        Response::Ok { message } => println!("{message}"),
        Response::Error { message } => {
            eprintln!("rtid: {message}");
            return ExitCode::from(1);
        }
        Response::Status(status) => {
            let kernel = &status.kernel;
            let rows = [
                ("kernel", kernel.release.clone()),
                ("btf", format!("{} ({} bytes)", kernel.btf.path.display(), kernel.btf.size)),
                ("backend: file", status.backends.file.name().into()),
                ("backend: exec", status.backends.exec.name().into()),
                ("backend: network", status.backends.network.name().into()),
                ("backend: unix sockets", status.backends.unix.name().into()),
                ("backend: bpf()", status.backends.protect.name().into()),
                ("lsm", status.lsm_note.clone().unwrap_or_else(|| "in use".into())),
                ("policy generation", status.policy_generation.to_string()),
                ("policy sources", status.policy_sources.join(", ")),
                ("identities", status.identities.join(", ")),
                ("labeled processes", status.labeled_processes.to_string()),
                ("actions judged", status.actions_judged.to_string()),
                ("events seen", status.events_seen.to_string()),
                ("events per second", format!("{:.1}", status.events_per_second)),
                ("ring-full drops", status.ring_full_drops.to_string()),
                ("hook errors", status.hook_errors.to_string()),
                ("unresolved paths", status.paths_unresolved.to_string()),
                ("events suppressed (cap)", status.events_suppressed.to_string()),
                ("protection refusals", status.protection_refusals.to_string()),
                ("untaggable children killed", status.untaggable_killed.to_string()),
                ("integrity", integrity(&status.integrity)),
                ("node", status.node.clone()),
                ("uptime", format!("{}s", status.uptime_seconds)),
            ];
            let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
            for (name, value) in rows {
                println!("{name:width$}  {value}");
            }
            if !kernel.fallbacks.is_empty() {
                println!();
                println!("{:<14} {:<12} WHY", "FALLBACK", "BACKEND");
                for fallback in &kernel.fallbacks {
                    println!("{:<14} {:<12} {}", fallback.action.describe(), fallback.backend.name(), fallback.reason);
                }
            }
            for skipped in &kernel.skipped_tracepoints {
                println!("tracepoint syscalls/{} not attached: {}", skipped.tracepoint, skipped.reason);
            }
            for problem in &status.integrity.unrepaired {
                println!("not restored: {problem}");
            }
            if !status.protections.is_empty() {
                println!();
                println!("{:<22} {:<15} HOW", "PROTECTION", "STATE");
                for protection in &status.protections {
                    let state = serde_json::to_value(protection.level).unwrap_or_default();
                    println!("{:<22} {:<15} {}", protection.name, state.as_str().unwrap_or("?"), protection.detail);
                }
            }
            println!();
            println!("{:<20} {:>8} {:>8}", "MAP", "ENTRIES", "CAPACITY");
            for (map, used, capacity) in &status.map_fill {
                println!("{map:<20} {used:>8} {capacity:>8}");
            }
            println!();
            println!(
                "{:<40} {:<5} {:>10} {:>10} {:>8} {:>12}",
                "SINK", "FORMAT", "DELIVERED", "DROPPED", "ERRORS", "QUEUE"
            );
            for sink in &status.sinks {
                let queue = format!("{}/{}", sink.queue_depth, sink.queue_capacity);
                println!(
                    "{:<40} {:<5} {:>10} {:>10} {:>8} {:>12}",
                    sink.name, sink.format, sink.delivered, sink.dropped, sink.errors, queue
                );
            }
        }
        Response::Ps { processes } => {
            println!(
                "{:>8}  {:>8}  {:<16} {:<24} {:>8}  {:>10}  COMMAND",
                "PID", "PARENT", "IDENTITY", "OWNER", "AGE", "EXPIRES"
            );
            for process in processes {
                let expires = process.expires_in_seconds.map_or("-".to_string(), |seconds| format!("{seconds}s"));
                let indent = "  ".repeat(process.depth as usize);
                println!(
                    "{:>8}  {:>8}  {:<16} {:<24} {:>7}s  {:>10}  {indent}{}",
                    process.pid,
                    process.parent,
                    process.identity,
                    process.owner.as_deref().unwrap_or("-"),
                    process.age_seconds,
                    expires,
                    process.command
                );
            }
        }
        Response::Explain(explanation) => {
            print!("{}: {} (by {}", explanation.identity, explanation.verdict, explanation.decided_by);
            if let (Some(id), Some(rule)) = (&explanation.rule_id, &explanation.rule) {
                print!(" {id}: {rule}");
            }
            println!(")");
            for candidate in &explanation.matches {
                let mark = if candidate.won { "wins" } else { "loses" };
                println!(
                    "  {mark}: {} ({}): {}: {}",
                    candidate.rule_id, candidate.verdict, candidate.rule, candidate.why
                );
            }
        }
        Response::Grants { grants } => {
            let now = crate::loader::boot_time_ns();
            println!("{:<10} {:<16} {:>9}  {:<40} REASON", "GRANT", "IDENTITY", "EXPIRES", "OBJECT");
            for grant in grants {
                let left = grant.expires_at_boot_ns.saturating_sub(now) / 1_000_000_000;
                println!(
                    "{:<10} {:<16} {:>8}s  {:<40} {}",
                    grant.id,
                    grant.identity,
                    left,
                    grant.object.describe(),
                    grant.reason.as_deref().unwrap_or("-")
                );
            }
        }
        Response::Approvals { requests } => {
            let now = crate::loader::boot_time_ns();
            println!(
                "{:<8} {:<9} {:<16} {:<24} {:>8} {:>9}  OBJECT",
                "REQUEST", "STATE", "IDENTITY", "OWNER", "ATTEMPTS", "EXPIRES"
            );
            for request in requests {
                let left = request.expires_at_boot_ns.saturating_sub(now) / 1_000_000_000;
                println!(
                    "{:<8} {:<9} {:<16} {:<24} {:>8} {:>8}s  {}",
                    request.id,
                    format!("{:?}", request.state).to_lowercase(),
                    request.identity,
                    request.owner.as_deref().unwrap_or("-"),
                    request.attempts,
                    left,
                    request.object.describe()
                );
            }
        }
        Response::LaunchPlan(plan) => {
            println!("daemon pid {}", plan.daemon_pid);
            println!("denied capabilities: {}", plan.denied_capabilities.join(", "));
            println!("user namespaces: {}", if plan.deny_user_namespaces { "denied" } else { "allowed" });
        }
        Response::Event(record) => {
            let object = record
                .path
                .clone()
                .or_else(|| record.address.as_ref().map(|address| format!("{address}:{}", record.port.unwrap_or(0))))
                .unwrap_or_default();
            println!(
                "{:<14} {:<8} pid={:<7} identity={:<12} verdict={:<8} outcome={:<15} rule={:<14} {}",
                record.kind,
                record.backend,
                record.tgid,
                record.identity.as_deref().unwrap_or("-"),
                record.verdict,
                record.outcome,
                record.rule_id.as_deref().unwrap_or("-"),
                object
            );
        }
    }
    ExitCode::SUCCESS
}

/// `whole`, or `degraded (missing: ...)` until a check finds everything in place.
fn integrity(report: &crate::api::IntegrityReport) -> String {
    if report.degraded {
        format!("degraded (missing: {})", report.missing.join(", "))
    } else {
        format!("whole ({} checks, every {}s)", report.checks, report.interval_seconds)
    }
}
