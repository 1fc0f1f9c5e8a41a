//! Compiles `proto/` into Rust with prost. protox parses the .proto files in pure Rust, so
//! building needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = ["proto/ferromq/wal.proto", "proto/ferromq/replication.proto"];
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
