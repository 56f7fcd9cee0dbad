//! Generates the gRPC code for `proto/shop.proto` with protox (a protobuf compiler in Rust), so
//! building the demo needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/shop.proto");
    let descriptors = protox::compile(["shop.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
