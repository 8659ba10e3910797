//! Compiles proto/postern.proto with protox, so building needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/postern.proto");
    let descriptors = protox::compile(["proto/postern.proto"], ["proto"])
        .expect("proto/postern.proto must compile");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)
        .expect("prost code generation");
}
