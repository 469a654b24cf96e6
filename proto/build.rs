//! Compiles `statiko/v1/*.proto` with protoc (already required by etcd-client) and writes the
//! descriptor set used by server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "statiko/v1/types.proto",
        "statiko/v1/site_service.proto",
        "statiko/v1/app_service.proto",
        "statiko/v1/deployment_service.proto",
        "statiko/v1/certificate_service.proto",
        "statiko/v1/cluster_service.proto",
        "statiko/v1/state_service.proto",
        "statiko/v1/token_service.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("statiko_descriptor.bin"))
        .compile_protos(&files, &["."])?;
    Ok(())
}
