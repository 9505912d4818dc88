//! Generates the Sparkplug B protobuf types from Eclipse Tahu's
//! `proto/sparkplug_b.proto` with protox (a pure-Rust compiler: no `protoc`
//! needed on the build machine) and prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sparkplug_b.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
