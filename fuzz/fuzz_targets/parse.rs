//! Arbitrary bytes into the Dockerfile parser. A file that parses is also
//! dumped (BuildKit's S-expression form) and compiled with no build args.
//! Errors are fine; panics, hangs and stack overflows are not.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::{compile, parser};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = parser::parse(data) else {
        return;
    };
    let dumped = parser::dump(&file);
    std::hint::black_box(&dumped);
    // Parsing is a pure function of the bytes.
    assert_eq!(
        parser::parse(data).as_ref(),
        Ok(&file),
        "parse is not deterministic"
    );
    let _ = compile(
        &file,
        &common::options(BTreeMap::new(), None, Vec::new()),
        &common::NoImages,
    );
});
