//! `postern directory …` as an operator and a member use it: a key made
//! with keygen, a directory signed from TOML, shown, turned into TXT
//! records, published by a real server process, fetched and imported by a
//! member's home.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

mod common;

use common::{BIN, free_port, ok, postern};

fn fails(home: &Path, args: &[&str]) -> String {
    let out = postern(home, args);
    assert!(!out.status.success(), "postern {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn directory_toml(version: u64, noise_key: &str, port: u16) -> String {
    format!(
        "origin = \"chat.test\"\nversion = {version}\nvalid_days = 2\nnoise_key = \"{noise_key}\"\n\
         [[endpoints]]\ncarrier = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\npriority = 10\n\
         [[endpoints]]\ncarrier = \"wss\"\nhost = \"cdn.test\"\nport = 443\npriority = 20\npath = \"/chat\"\n"
    )
}

#[test]
fn an_operator_signs_offline_and_a_member_fetches_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let key = d.join("directory.key");
    let key_s = key.to_str().unwrap();

    // keygen: prints the vkey, writes a private key, never overwrites.
    let vkey = ok(
        &home,
        &[
            "directory",
            "keygen",
            "--out",
            key_s,
            "--name",
            "chat.test/directory",
        ],
    );
    let vkey = vkey.trim().to_owned();
    assert!(vkey.starts_with("chat.test/directory+"), "{vkey}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        fails(&home, &["directory", "keygen", "--out", key_s]).contains("refusing to overwrite")
    );

    // The server's Noise key exists before the directory is signed.
    let data = d.join("server");
    std::fs::create_dir_all(&data).unwrap();
    let noise = postern_proto::keys::NoiseKeypair::generate();
    std::fs::write(data.join("server.key"), hex::encode(noise.secret())).unwrap();
    let noise_b64 = URL_SAFE_NO_PAD.encode(noise.public);
    let port = free_port();

    // sign, show, txt.
    let toml = d.join("directory.toml");
    std::fs::write(&toml, directory_toml(3, &noise_b64, port)).unwrap();
    let signed = ok(
        &home,
        &["directory", "sign", "--key", key_s, toml.to_str().unwrap()],
    );
    let signed_path = d.join("directory.signed");
    std::fs::write(&signed_path, &signed).unwrap();
    let shown = ok(&home, &["directory", "show", signed_path.to_str().unwrap()]);
    assert!(shown.contains("version    3"), "{shown}");
    assert!(
        shown.contains("wss  cdn.test:443 priority 20 path=/chat"),
        "{shown}"
    );
    assert!(shown.contains("signed by  chat.test/directory+"), "{shown}");
    assert!(shown.contains("not checked"), "{shown}");
    let txt = ok(
        &home,
        &[
            "directory",
            "txt",
            signed_path.to_str().unwrap(),
            "--name",
            "_postern.chat.test",
        ],
    );
    assert!(
        txt.starts_with("_postern.chat.test 300 IN TXT \"postern-dir1 1/1\" \""),
        "{txt}"
    );
    // A description with a mistake is refused with the reason.
    std::fs::write(
        &toml,
        directory_toml(3, &noise_b64, port) + "colour = \"red\"\n",
    )
    .unwrap();
    let err = fails(
        &home,
        &["directory", "sign", "--key", key_s, toml.to_str().unwrap()],
    );
    assert!(err.contains("unknown field `colour`"), "{err}");

    // The server publishes the signed file.
    let http = free_port();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [directory]\nfile = \"{}\"\nvkey = \"{vkey}\"\n",
            signed_path.display()
        ),
    )
    .unwrap();
    let _server = Server(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let link = data.join("server-link.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !link.exists() {
        assert!(Instant::now() < deadline, "server not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&home, &["setup", link.to_str().unwrap()]);
    let err = fails(&home, &["directory", "show"]);
    assert!(err.contains("holds no directory yet"), "{err}");

    // fetch: over the server's HTTP API, reported as JSON.
    let report: serde_json::Value =
        serde_json::from_str(&ok(&home, &["directory", "fetch", "--json"])).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["channel"], "http");
    assert_eq!(report["version"], 3);
    let shown = ok(&home, &["directory", "show"]);
    assert!(
        shown.contains("held, signed by the pinned key; from http http://"),
        "{shown}"
    );
    // The same file shown from this home is checked against its key.
    let shown = ok(&home, &["directory", "show", signed_path.to_str().unwrap()]);
    assert!(
        shown.contains("verdict    signed by the pinned key"),
        "{shown}"
    );
    // A DNS fetch is impossible: this link names no resolver.
    let err = fails(&home, &["directory", "fetch", "--via", "dns"]);
    assert!(err.contains("names no dns location"), "{err}");

    // import: a newer version is taken, an older one refused.
    std::fs::write(&toml, directory_toml(4, &noise_b64, port)).unwrap();
    let v4 = d.join("v4.signed");
    std::fs::write(
        &v4,
        ok(
            &home,
            &["directory", "sign", "--key", key_s, toml.to_str().unwrap()],
        ),
    )
    .unwrap();
    let out = postern(&home, &["directory", "import", v4.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Imported directory version 4"));
    let err = fails(
        &home,
        &["directory", "import", signed_path.to_str().unwrap()],
    );
    assert!(err.contains("older than the version 4"), "{err}");
    // A forged one (another key) is refused too.
    let other = d.join("other.key");
    ok(
        &home,
        &[
            "directory",
            "keygen",
            "--out",
            other.to_str().unwrap(),
            "--name",
            "chat.test/directory",
        ],
    );
    std::fs::write(&toml, directory_toml(9, &noise_b64, port)).unwrap();
    let forged = d.join("forged.signed");
    std::fs::write(
        &forged,
        ok(
            &home,
            &[
                "directory",
                "sign",
                "--key",
                other.to_str().unwrap(),
                toml.to_str().unwrap(),
            ],
        ),
    )
    .unwrap();
    let err = fails(&home, &["directory", "import", forged.to_str().unwrap()]);
    assert!(
        err.contains("not signed by the pinned directory key"),
        "{err}"
    );
}
