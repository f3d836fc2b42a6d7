//! rtid's kernel programs. One module per hook family; shared pieces (maps,
//! kernel struct reading, path resolution, judgement, events) in their own modules.
#![no_std]
#![no_main]

mod capability;
mod change;
mod events;
mod exec;
mod file;
mod identity;
mod judge;
mod kernel;
mod lsm;
mod maps;
mod net;
mod path;
mod protect;
mod socket;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}
