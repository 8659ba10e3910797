//! The async shells over real loopback sockets: a sequencer batching
//! appends from many tasks and getting each checkpoint cosigned by a
//! witness served by `witness_router`, the log served by `log_router`, and
//! the verifier reading it over HTTP with a witness quorum.

use std::time::Duration;

use postern_tlog::checkpoint::Policy;
use postern_tlog::client;
use postern_tlog::http::{HttpFetch, WitnessClient, log_router, witness_router};
use postern_tlog::note::{Algorithm, Signer};
use postern_tlog::sequencer::{Sequencer, SequencerConfig, SequencerError};
use postern_tlog::witness::{FileStore, Witness};
use postern_tlog::{Fetch, LogWriter};

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequenced_cosigned_served_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let log_key = Signer::generate("log.example/legal", Algorithm::Ed25519).unwrap();
    let witness_key = Signer::generate("witness.example", Algorithm::CosignatureV1).unwrap();
    let store = FileStore::open(&tmp.path().join("witness")).unwrap();
    let witness_url = serve(witness_router(Witness::new(
        witness_key.clone(),
        vec![log_key.verifier()],
        store,
    )))
    .await;
    let log_dir = tmp.path().join("log");
    let log_url = serve(axum::Router::new().nest("/log", log_router(log_dir.clone()))).await;

    let mut writer = LogWriter::open(&log_dir, log_key.clone()).unwrap();
    writer.set_sync(false);
    let config = SequencerConfig {
        interval: Duration::from_millis(50),
        max_batch: 1000,
        witnesses: vec![WitnessClient::new(&witness_url, witness_key.verifier()).unwrap()],
        quorum: 1,
    };
    let (seq, task) = Sequencer::spawn(writer, config);

    let policy = Policy {
        log: log_key.verifier(),
        witnesses: vec![witness_key.verifier()],
        quorum: 1,
    };
    let fetch = HttpFetch::new(&format!("{log_url}/log")).unwrap();
    let mut state = None;
    for round in 0..3u64 {
        let appends: Vec<_> = (0..300u64)
            .map(|i| {
                let seq = seq.clone();
                tokio::spawn(async move { seq.append(format!("r{round} e{i}").into_bytes()).await })
            })
            .collect();
        let mut indexes = Vec::new();
        for a in appends {
            indexes.push(a.await.unwrap().unwrap());
        }
        indexes.sort();
        assert_eq!(
            indexes,
            (round * 300..(round + 1) * 300).collect::<Vec<_>>()
        );
        // Cosigning follows publishing; give it a moment.
        let mut verdict = None;
        for _ in 0..100 {
            match client::verify(&fetch, &policy, state.as_ref()).await {
                Ok(v) if v.checkpoint.size == (round + 1) * 300 => {
                    verdict = Some(v);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let v = verdict.expect("a cosigned checkpoint of the new size");
        assert_eq!(v.cosigners, vec!["witness.example"]);
        state = Some(v.state);
    }
    drop(seq);
    task.await.unwrap();

    // The witness serves the latest checkpoint it cosigned for the log.
    let hash = postern_tlog::witness::origin_hash("log.example/legal");
    let witnessed = HttpFetch::new(&witness_url)
        .unwrap()
        .fetch(&format!("{hash}/checkpoint"))
        .await
        .unwrap();
    let opened = policy.open(&witnessed).unwrap();
    assert_eq!(opened.checkpoint.size, 900);
    assert!(matches!(
        HttpFetch::new(&witness_url)
            .unwrap()
            .fetch(&format!("{}/checkpoint", "0".repeat(64)))
            .await,
        Err(postern_tlog::client::FetchError::NotFound(_))
    ));

    // An entry too large for a bundle is refused without stopping the log.
    let writer = LogWriter::open(&log_dir, log_key.clone()).unwrap();
    let (seq, task) = Sequencer::spawn(writer, SequencerConfig::default());
    assert!(seq.append(vec![0; 70_000]).await.is_err());
    assert_eq!(seq.append(b"fine".to_vec()).await.unwrap(), 900);

    // Closing stops it while handles remain: an append already sent is
    // published and answered, a later one is refused.
    let other = seq.clone();
    let sent = tokio::spawn(async move { other.append(b"last".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    seq.close();
    task.await.unwrap();
    assert_eq!(sent.await.unwrap().unwrap(), 901);
    assert!(matches!(
        seq.append(b"late".to_vec()).await,
        Err(SequencerError::Stopped)
    ));
    let reopened = LogWriter::open(&log_dir, log_key).unwrap();
    assert_eq!(reopened.size(), 902);
}
