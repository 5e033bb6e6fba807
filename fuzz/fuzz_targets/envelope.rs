//! Reading the envelope of a delivery body, as the receiver does before storing it, and reading
//! the stored text back into an event, as the worker does.

#![no_main]

use dsyncd::envelope::{Envelope, MAX_FIELD_LEN};
use dsyncd::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(envelope) = Envelope::parse(body) else {
        return;
    };
    // The receiver stores an accepted body as text.
    let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
    for field in [&envelope.id, &envelope.event] {
        assert!(!field.is_empty() && field.len() <= MAX_FIELD_LEN);
        assert!(!field.chars().any(char::is_control));
    }
    let created_at = envelope.created_at();
    // The worker reads back the same event from what the receiver stored.
    let event = Event::from_payload(text).expect("the worker reads what the receiver stored");
    assert_eq!(event.id, envelope.id);
    assert_eq!(event.event, envelope.event);
    assert_eq!(event.created_at, created_at);
    if let Some(data) = envelope.data {
        assert_eq!(event.data.get(), data.get());
    }
});
