//! Reading events from the kernel ring buffer, and their JSON form.

pub mod enrich;
pub mod ocsf;
pub mod pipeline;
pub mod record;
pub mod sinks;
pub mod throttle;

use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use rtid_common::Event;

/// Decodes one ring-buffer record. Records are written by the kernel programs
/// with exactly `size_of::<Event>()` bytes; anything else is not ours.
pub fn decode(record: &[u8]) -> Option<Event> {
    if record.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<Event>() bytes, Event is
    // plain data valid for any bit pattern, and read_unaligned copes with the
    // ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr() as *const Event) })
}

/// Reads events from the `EVENTS` ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>) -> EventReader {
        EventReader { ring }
    }

    /// Every event available now.
    pub fn drain(&mut self) -> Vec<Event> {
        self.drain_up_to(usize::MAX)
    }

    /// Up to `limit` of the events available now.
    pub fn drain_up_to(&mut self, limit: usize) -> Vec<Event> {
        let mut events = Vec::new();
        while events.len() < limit
            && let Some(record) = self.ring.next()
        {
            if let Some(event) = decode(&record) {
                events.push(event);
            }
        }
        events
    }

    /// Blocks until the ring has data or `timeout` passes.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let mut poll_fd = libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll_fd, 1, millis) > 0 }
    }

    /// Collects events until one satisfies `wanted` or `timeout` passes;
    /// returns everything collected and the index of the wanted one.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&Event) -> bool,
    ) -> (Vec<Event>, Option<usize>) {
        let deadline = Instant::now() + timeout;
        let mut collected: Vec<Event> = Vec::new();
        loop {
            let first_new = collected.len();
            collected.extend(self.drain());
            if let Some(offset) = collected[first_new..].iter().position(&mut wanted) {
                return (collected, Some(first_new + offset));
            }
            let now = Instant::now();
            if now >= deadline {
                return (collected, None);
            }
            self.wait_readable((deadline - now).min(Duration::from_millis(50)));
        }
    }

    pub fn as_ring(&mut self) -> &mut RingBuf<MapData> {
        &mut self.ring
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}
