//! Mapping event data to directory rows and reducing a batch, as the directory handler does
//! before it writes: it must not panic, and must not depend on the order of the batch.
//!
//! The input is a batch of delivery bodies, one per line; lines that are not events are
//! skipped (the receiver would have refused them), and so are repeated ids (the inbox holds
//! one row per id).

#![no_main]

use std::collections::HashSet;

use dsyncd::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let mut ids = HashSet::new();
    let events: Vec<Event> = text
        .lines()
        .filter_map(|line| Event::from_payload(line).ok())
        .filter(|event| ids.insert(event.id.clone()))
        .collect();
    let batch: Vec<&Event> = events.iter().collect();
    // A rejection is a valid outcome (the event goes to `dead`); a panic is not.
    let _ = dsyncd::directory::plan_for_fuzzing(&batch);
    for event in &batch {
        let _ = dsyncd::directory::plan_for_fuzzing(std::slice::from_ref(event));
    }
});
