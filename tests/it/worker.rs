//! The worker over a real inbox.
