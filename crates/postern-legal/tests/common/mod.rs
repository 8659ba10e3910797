//! Court-order fixtures made with the openssl command line
//! (fixtures/make-orders.sh), once per test binary, in a temporary
//! directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use postern_legal::order::TrustStore;

pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("orders");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-orders.sh");
        let status = std::process::Command::new("sh")
            .arg(script)
            .arg(&out)
            .status()
            .expect("run make-orders.sh (needs the openssl command)");
        assert!(status.success(), "make-orders.sh failed");
        (tmp, out)
    })
    .1
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

pub fn trust() -> TrustStore {
    let mut t = TrustStore::new();
    assert_eq!(t.add_anchors("DE", &read("de-root.pem")).unwrap(), 1);
    assert_eq!(t.add_anchors("FR", &read("fr-root.pem")).unwrap(), 1);
    t
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
