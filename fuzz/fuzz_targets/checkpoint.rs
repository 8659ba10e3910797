//! Checkpoints and what carries them: checkpoint text, a signed checkpoint
//! opened against a policy, a witness's add-checkpoint request (through the
//! whole sans-IO witness), offline proof bundles and monitor state files.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use postern_tlog::checkpoint::{Checkpoint, Policy};
use postern_tlog::client::MonitorState;
use postern_tlog::note::{Algorithm, Signer};
use postern_tlog::proof::ProofBundle;
use postern_tlog::witness::{AddCheckpoint, LogRecord, Witness, WitnessStore};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::log_only(
        Signer::from_seed("example.org/log", Algorithm::Ed25519, [1; 32])
            .unwrap()
            .verifier(),
    )
});

/// A witness store in memory: the fuzzer must not touch the disk.
#[derive(Default)]
struct Memory(Option<LogRecord>);

impl WitnessStore for Memory {
    fn latest(&self, _origin: &str) -> Result<Option<LogRecord>, String> {
        Ok(self.0.clone())
    }
    fn store(&mut self, _origin: &str, record: &LogRecord) -> Result<(), String> {
        self.0 = Some(record.clone());
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Checkpoint::parse(text) {
            assert_eq!(c.to_string(), text);
        }
        if let Ok(p) = ProofBundle::parse(text) {
            let _ = p.verify(b"entry", &POLICY);
        }
        let _ = MonitorState::parse(text);
    }
    let _ = POLICY.open(data);
    if let Ok(req) = AddCheckpoint::parse(data) {
        assert_eq!(AddCheckpoint::parse(&req.to_bytes()), Ok(req));
    }
    let signer = Signer::from_seed("witness.example", Algorithm::CosignatureV1, [2; 32]).unwrap();
    let mut witness = Witness::new(signer, vec![POLICY.log.clone()], Memory::default());
    let r = witness.handle(data, 1);
    assert!(matches!(r.status, 200 | 400 | 403 | 404 | 409 | 422));
});
