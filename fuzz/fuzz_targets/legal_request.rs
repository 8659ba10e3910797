//! Request files and policy files, as an operator (or whoever wrote the
//! file they were handed) might feed them to `postern legal submit`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_legal::policy::{OrderStatus, Policy, decide};
use postern_legal::request::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::parse(data) {
        // Whatever parses can be decided without panicking, and a refusal
        // never grants anything.
        let resolved: Vec<_> = r.targets.iter().map(|_| Some([1u8; 16])).collect();
        let d = decide(&Policy::default(), &r, OrderStatus::Valid, &resolved);
        if !d.grants_anything() {
            assert!(d.accounts.is_empty() && d.categories.is_empty());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text);
    }
});
