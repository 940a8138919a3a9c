//! Loading failures. Kept in their own test binary: the engine is process-wide, so these must
//! run in a process that never loads the real library.

use std::io::Write;

use cxb_livekit::room::RoomError;
use cxb_livekit_ffi::FfiEngine;

fn unavailable(result: Result<std::sync::Arc<FfiEngine>, RoomError>) -> String {
    match result {
        Err(RoomError::Unavailable(msg)) => msg,
        other => panic!("expected RoomError::Unavailable, got {other:?}"),
    }
}

#[test]
fn a_missing_library_is_unavailable_and_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let msg = unavailable(FfiEngine::load(dir.path().join("liblivekit_ffi.so")));
    assert!(msg.contains("not found"), "{msg}");
    assert!(msg.contains("fetch-livekit-ffi.sh"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_library_is_unavailable() {
    let mut file = tempfile::Builder::new().suffix(".so").tempfile().unwrap();
    file.write_all(b"#!/bin/sh\necho this is not an ELF shared object\n").unwrap();
    let msg = unavailable(FfiEngine::load(file.path()));
    assert!(msg.contains("cannot load"), "{msg}");
}

#[test]
fn a_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    unavailable(FfiEngine::load(dir.path()));
}

#[test]
fn a_library_without_the_livekit_entry_points_is_unavailable() {
    // Any real shared library that is not liblivekit_ffi: the C library's math part is on every
    // glibc system and harmless to load.
    let Some(libm) = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipping: no libm.so.6 found to stand in for a wrong library");
        return;
    };
    let msg = unavailable(FfiEngine::load(libm));
    assert!(msg.contains("is not liblivekit_ffi"), "{msg}");
    assert!(msg.contains("livekit_ffi_initialize"), "{msg}");
}
