//! Compiles the .proto files with protox, so building needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/postern.proto");
    println!("cargo:rerun-if-changed=proto/content.proto");
    let descriptors = protox::compile(["proto/postern.proto", "proto/content.proto"], ["proto"])
        .expect("the .proto files must compile");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)
        .expect("prost code generation");
}
