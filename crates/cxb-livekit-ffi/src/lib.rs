//! LiveKit room media through LiveKit's own FFI engine, `liblivekit_ffi`.
//!
//! The official `livekit` crate cannot build on our machines (its `webrtc-sys` downloads a
//! prebuilt libwebrtc). The same engine the Python and Node SDKs wrap ships, prebuilt, in the
//! PyPI `livekit` wheel; `scripts/fetch-livekit-ffi.sh` fetches a pinned, hash-checked copy.
//! This crate loads it at run time ([`FfiEngine::load`]) and speaks its protobuf protocol
//! (`proto/`, generated at build time with `protox` + `prost-build`, no `protoc`).
//!
//! [`FfiConnector`] implements [`cxb_livekit::room::RoomConnector`]: it joins a room, publishes the
//! bot's audio track from an engine audio source, subscribes to remote audio (resampled by the
//! engine to the join rate), and maps room events to [`cxb_livekit::room::RoomEvent`]s.
//!
//! Threading: the engine calls back on its own threads. The callback only decodes, copies and
//! queues ([`dispatch`]); requests and handle releases happen on tokio tasks or on a janitor
//! thread, never on the callback thread. See `docs/livekit-ffi.md`.

mod dispatch;
mod engine;
mod room;
mod sys;

/// Types generated from the LiveKit FFI protocol (`proto/*.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/livekit.proto.rs"));
}

pub use engine::{default_fetch_dir, default_library_path, AudioSource, EngineStats, FfiEngine, LIB_ENV};
pub use room::{ConnectOptions, FfiConnector};

/// The `FileDescriptorSet` compiled from `proto/`, to check that the committed protocol matches
/// the descriptors of the fetched wheel (`livekit_ffi_descriptors.pb`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/livekit_ffi_fds.bin"));

#[cfg(test)]
mod tests;
