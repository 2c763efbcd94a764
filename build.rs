//! Compiles proto/herd.proto into the one set of generated types that master, worker and
//! herdctl share. protox parses the proto in pure Rust, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["herd.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
