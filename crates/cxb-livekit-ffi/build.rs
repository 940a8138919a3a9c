//! Generates the FFI protocol types from the committed `proto/*.proto` with `protox` (a pure-Rust
//! protobuf compiler) and `prost-build`, so a build needs neither `protoc` nor any download.

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");
    // ffi.proto imports every other file of the protocol.
    let fds = match protox::compile(["ffi.proto"], [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("compiling proto/ffi.proto: {e:?}"),
    };
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Kept so tests can compare the committed protocol with the one the fetched library speaks.
    std::fs::write(out_dir.join("livekit_ffi_fds.bin"), prost::Message::encode_to_vec(&fds))
        .expect("writing the descriptor set");
    let mut config = prost_build::Config::new();
    if let Err(e) = config.compile_fds(fds) {
        panic!("generating Rust from the LiveKit FFI protocol: {e}");
    }
}
