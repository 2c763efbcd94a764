//! Compiles proto/herd.proto into the one set of generated types that master, worker and
//! herdctl share. protox parses the proto in pure Rust, so no system protoc is needed. The
//! encoded descriptor set is kept too, for gRPC server reflection, with the one of the last
//! release (proto/released/), which the wire-compatibility test compares it with.

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Run for the `herd` package in shared/: the proto is one folder up.
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["herd.proto"], ["../proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("herd_descriptor.bin"), fds.encode_to_vec())?;
    // The contract as last released, for the wire-compatibility check (shared/wire.rs).
    let released = protox::compile(["herd.proto"], ["../proto/released/0.1.0"])?;
    std::fs::write(
        out.join("released_descriptor.bin"),
        released.encode_to_vec(),
    )?;
    // Every service uses herd's codec: prost with a small first buffer (shared/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::HerdCodec")
        .compile_fds(fds)?;
    Ok(())
}
