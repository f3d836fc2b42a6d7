//! JSON (or OCSF) lines on the daemon's stdout: the DaemonSet way, read by
//! the cluster's log pipeline. A stalled stdout only fills this sink's queue.

use tokio::io::AsyncWriteExt;

use crate::events::pipeline::SinkInput;

/// Most events written per flush.
const BATCH: usize = 512;

pub async fn run(mut input: SinkInput) {
    let mut stdout = tokio::io::stdout();
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = input.receiver.recv().await {
        batch.clear();
        let mut count = 1;
        append_line(&mut batch, input.format.encode(&first));
        while count < BATCH {
            let Ok(next) = input.receiver.try_recv() else { break };
            append_line(&mut batch, input.format.encode(&next));
            count += 1;
        }
        match stdout.write_all(&batch).await.and(stdout.flush().await) {
            Ok(()) => input.stats.delivered(count as u64),
            Err(_) => {
                input.stats.error();
                input.stats.dropped(count as u64);
            }
        }
    }
}

fn append_line(batch: &mut Vec<u8>, line: Vec<u8>) {
    batch.extend_from_slice(&line);
    batch.push(b'\n');
}
