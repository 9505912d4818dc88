//! The Sparkplug B protobuf types, generated at build time (build.rs) from
//! Eclipse Tahu's `proto/sparkplug_b.proto`.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
