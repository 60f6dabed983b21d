//! Compiles `proto/` with protox (pure Rust: no system `protoc`) and writes the descriptor
//! set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sekimori/v1/access.proto",
        "proto/sekimori/v1/audit.proto",
        "proto/sekimori/v1/admin.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sekimori_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
