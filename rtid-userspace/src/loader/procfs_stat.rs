//! Process start times from /proc, to detect pid reuse around a label.

/// Start time of `pid` on the boot clock, in ns (clock-tick precision).
pub fn start_time_ns(pid: u32) -> Result<u64, String> {
    let process = procfs::process::Process::new(pid as i32).map_err(|error| format!("no such process ({error})"))?;
    let stat = process.stat().map_err(|error| format!("reading /proc/{pid}/stat: {error}"))?;
    let ticks_per_second = procfs::ticks_per_second();
    Ok(stat.starttime * (1_000_000_000 / ticks_per_second))
}
