//! The `postern` command as a member and an operator use it: a real server
//! process, real CLI invocations, real loopback sockets. Includes killing
//! the server with SIGKILL and checking nothing acknowledged was lost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, free_port, ok, postern};

struct ServerProc {
    child: Child,
    data: PathBuf,
    outbox: PathBuf,
    config: PathBuf,
}

impl ServerProc {
    fn start(dir: &Path) -> ServerProc {
        Self::start_with(dir, "")
    }

    /// A server whose config file ends with `extra` (TOML tables).
    fn start_with(dir: &Path, extra: &str) -> ServerProc {
        let data = dir.join("server");
        let outbox = dir.join("outbox.jsonl");
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n[limits]\ncode_interval = 0\n{extra}",
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let mut s = ServerProc {
            child: spawn_server(&config, &data, &outbox),
            data,
            outbox,
            config,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let link = self.data.join("server-link.txt");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited: {status}");
            }
            if let Ok(text) = std::fs::read_to_string(&link) {
                let addr = text
                    .split("tcp=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap()
                    .to_owned();
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn link_file(&self) -> PathBuf {
        self.data.join("server-link.txt")
    }

    fn code(&self, phone: &str) -> String {
        let text = std::fs::read_to_string(&self.outbox).unwrap();
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains(phone))
            .expect("a code");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["code"].as_str().unwrap().to_owned()
    }

    /// SIGKILL: no chance to flush anything.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.child = spawn_server(&self.config, &self.data, &self.outbox);
        self.wait_ready();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(config: &Path, data: &Path, outbox: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--sms-outbox")
        .arg(outbox)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn member(s: &ServerProc, home: &Path, phone: &str, username: &str) {
    ok(home, &["setup", s.link_file().to_str().unwrap()]);
    register(s, home, phone, username);
}

fn register(s: &ServerProc, home: &Path, phone: &str, username: &str) {
    ok(home, &["request-code", phone]);
    ok(home, &["register", phone, "--code", &s.code(phone)]);
    ok(home, &["username", "set", username]);
}

/// Everything `recv --json` prints: messages and membership events.
fn recv_all(home: &Path, wait: &str) -> Vec<serde_json::Value> {
    ok(home, &["recv", "--wait", wait, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The messages `recv --json` prints (not the events).
fn recv_json(home: &Path, wait: &str) -> Vec<serde_json::Value> {
    recv_all(home, wait)
        .into_iter()
        .filter(|v| v["system"] == false)
        .collect()
}

#[test]
fn two_members_converse_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    member(&s, &alice, "+14155552671", "alice");
    member(&s, &bob, "+14155552672", "bob");

    let who: serde_json::Value = serde_json::from_str(&ok(&alice, &["whoami", "--json"])).unwrap();
    assert_eq!(who["phone"], "+14155552671");
    assert_eq!(who["username"], "alice");

    ok(&alice, &["send", "@bob", "hello bob"]);
    ok(&alice, &["send", "+1 415 555 2672", "by phone too"]);
    let all = recv_all(&bob, "1");
    assert_eq!(all[0]["system"], true, "{all:?}");
    assert_eq!(all[0]["text"], "@alice started a chat with you");
    let got: Vec<_> = all.into_iter().filter(|v| v["system"] == false).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["conversation"], "@alice");
    assert_eq!(got[0]["from"], "@alice");
    assert_eq!(got[0]["text"], "hello bob");
    assert_eq!(got[1]["text"], "by phone too");
    assert!(got[0]["sent_at"].as_i64().unwrap() > 1_600_000_000_000);
    // Acked: a second recv has nothing new.
    assert!(recv_json(&bob, "0.5").is_empty());

    ok(&bob, &["send", "@alice", "hi alice"]);
    let plain = ok(&alice, &["recv", "--wait", "1"]);
    assert!(plain.contains("[@bob] @bob: hi alice"), "{plain}");
}

#[test]
fn register_reads_the_code_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path());
    let home = dir.path().join("carol");
    ok(&home, &["setup", s.link_file().to_str().unwrap()]);
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(&home)
        .args(["register", "+14155552673"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Ok(text) = std::fs::read_to_string(&s.outbox)
            && text.contains("+14155552673")
        {
            break s.code("+14155552673");
        }
        assert!(Instant::now() < deadline, "no code requested");
        std::thread::sleep(Duration::from_millis(50));
    };
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Enter the code"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Registered"));
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path());
    let home = dir.path().join("dave");

    let out = postern(&home, &["send", "@x", "hi"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("setup"),
        "names the next step"
    );

    ok(&home, &["setup", s.link_file().to_str().unwrap()]);
    let out = postern(&home, &["setup", s.link_file().to_str().unwrap()]);
    assert!(!out.status.success(), "setting up twice is refused");

    let out = postern(&home, &["request-code", "5552671"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("international"));

    let out = postern(&home, &["send", "@x", "hi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("register"));

    register(&s, &home, "+14155552674", "dave");
    let out = postern(&home, &["send", "@nobody_here", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account"));

    let out = postern(&home, &["setup", "postern://server?v=1&tcp=127.0.0.1:1"]);
    assert!(!out.status.success());
}

#[test]
fn nothing_acknowledged_is_lost_when_the_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    member(&s, &alice, "+14155552671", "alice");
    member(&s, &bob, "+14155552672", "bob");

    // Alice sends in a loop while the server is SIGKILLed and restarted
    // underneath her. `send` exits 0 only once the server durably stored the
    // message; those are the ones that must all arrive, each once.
    let sender = {
        let alice = alice.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for i in 0..40 {
                let text = format!("message {i}");
                if postern(&alice, &["send", "@bob", &text]).status.success() {
                    acknowledged.push(text);
                }
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    s.kill9();
    std::thread::sleep(Duration::from_millis(300));
    s.restart();
    std::thread::sleep(Duration::from_millis(500));
    s.kill9();
    s.restart();
    let acknowledged = sender.join().unwrap();
    eprintln!(
        "{} of 40 sends acknowledged across two SIGKILLs",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 20,
        "most sends succeed across restarts: {acknowledged:?}"
    );

    let got: Vec<String> = recv_json(&bob, "1")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    for text in &acknowledged {
        let n = got.iter().filter(|g| *g == text).count();
        assert_eq!(n, 1, "{text:?} arrived {n} times; got {got:?}");
    }
    // Order is kept: what arrived is in sending order.
    let mut sorted = got.clone();
    sorted.sort_by_key(|t| t.trim_start_matches("message ").parse::<u32>().unwrap());
    assert_eq!(got, sorted);

    // Bob's acks are durable too: after another SIGKILL nothing comes back.
    s.kill9();
    s.restart();
    assert!(recv_json(&bob, "0.5").is_empty());
}

#[test]
fn the_demo_shows_a_conversation() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("@alice -> @bob: Hi Bob"), "{text}");
    assert!(text.contains("@bob -> @alice:"), "{text}");
}

#[test]
fn serve_with_no_flags_uses_defaults_under_the_data_home() {
    // `serve` with no flags: data under $XDG_DATA_HOME/postern. The default
    // ports may be taken on a shared machine, so only check what it prints
    // and writes, then stop it.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("XDG_DATA_HOME", dir.path())
        .env_remove("POSTERN_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let link = dir.path().join("postern/server-link.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !link.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("cannot listen") {
                eprintln!("skipped: a default port is taken on this machine ({err})");
                return;
            }
            panic!("serve exited {status}: {err}");
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: a graceful stop.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("postern://server?v=1&tcp=127.0.0.1:7447"),
        "{text}"
    );
    assert!(text.contains("end-to-end encrypted (MLS)"), "{text}");
    // The transparency log's key, printed and written beside the link.
    let vkey = std::fs::read_to_string(dir.path().join("postern/log-vkey.txt")).unwrap();
    assert!(vkey.starts_with("127.0.0.1/log+"), "{vkey}");
    assert!(text.contains(vkey.trim()), "{text}");
    assert!(out.status.success());
}

#[test]
fn groups_devices_and_safety_numbers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path());
    let (alice, bob, carol) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    member(&s, &alice, "+14155552681", "alice");
    member(&s, &bob, "+14155552682", "bob");
    member(&s, &carol, "+14155552683", "carol");

    let made = ok(&alice, &["group", "create", "book-club", "@bob"]);
    assert!(made.starts_with("Created #book-club"), "{made}");
    ok(&alice, &["group", "add", "#book-club", "@carol"]);
    ok(&alice, &["send", "#book-club", "chapter 3 tonight"]);
    let got = recv_all(&carol, "1");
    let texts: Vec<&str> = got.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"chapter 3 tonight"), "{texts:?}");
    assert!(got.iter().any(|v| v["conversation"] == "#book-club"));

    let list: serde_json::Value =
        serde_json::from_str(&ok(&bob, &["group", "list", "--json"])).unwrap();
    let club = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "#book-club")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(club["members"].as_array().unwrap().len(), 3, "{club}");

    ok(&alice, &["group", "remove", "#book-club", "@carol"]);
    ok(&bob, &["send", "#book-club", "carol is gone"]);
    let after = recv_all(&carol, "1");
    assert!(
        after.iter().all(|v| v["text"] != "carol is gone"),
        "a removed member gets nothing more: {after:?}"
    );
    ok(&bob, &["group", "leave", "#book-club"]);
    let err = postern(&bob, &["send", "#book-club", "still here?"]);
    assert!(!err.status.success(), "bob left");

    // Safety numbers match on both sides and flag a change.
    let sa = ok(&alice, &["verify", "@bob"]);
    let sb = ok(&bob, &["verify", "@alice"]);
    let digits = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit() || c == ' '))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(digits(&sa), digits(&sb));
    assert_eq!(digits(&sa).split(' ').count(), 12, "{sa}");
    ok(&alice, &["verify", "@bob", "--confirm"]);
    assert!(ok(&alice, &["verify", "@bob"]).contains("You verified this number"));

    // Bob adds a laptop: a new key, a new safety number, flagged when it
    // joins the direct chat and in `verify`.
    ok(&alice, &["send", "@bob", "before the laptop"]);
    recv_all(&bob, "0.5");
    let link = ok(&bob, &["device", "link"]);
    let link = link
        .lines()
        .find(|l| l.starts_with("postern://device?"))
        .unwrap();
    let laptop = dir.path().join("bob-laptop");
    let added = ok(&laptop, &["device", "add", link, "--device-name", "laptop"]);
    assert!(added.contains("device 2"), "{added}");
    let devices: serde_json::Value =
        serde_json::from_str(&ok(&bob, &["device", "list", "--json"])).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 2);
    let notice = recv_all(&alice, "1");
    assert!(
        notice.iter().any(|v| v["text"]
            .as_str()
            .unwrap()
            .contains("@bob's safety number changed")),
        "{notice:?}"
    );
    let changed = ok(&alice, &["verify", "@bob"]);
    assert!(changed.contains("NOT the number you verified"), "{changed}");

    // The laptop reads the direct chat; removing it ends that.
    ok(&alice, &["send", "@bob", "hi both devices"]);
    assert!(
        recv_json(&laptop, "1")
            .iter()
            .any(|v| v["text"] == "hi both devices")
    );
    ok(&bob, &["device", "remove", "2"]);
    let gone = postern(&laptop, &["recv", "--wait", "0.5"]);
    assert!(
        !gone.status.success(),
        "a removed device can no longer connect"
    );
}

#[test]
fn replies_edits_reactions_and_deletions_reach_the_other_side() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    member(&s, &alice, "+14155552691", "alice");
    member(&s, &bob, "+14155552692", "bob");

    ok(&alice, &["send", "@bob", "dinner at 7?"]);
    let got = recv_json(&bob, "1");
    let id = got[0]["message_id"].as_str().unwrap().to_owned();
    let short = &id[id.len() - 8..];
    ok(&bob, &["send", "@alice", "yes!", "--reply-to", short]);
    ok(&bob, &["react", "@alice", short, "👍"]);
    ok(&alice, &["edit", "@bob", short, "dinner at 8?"]);
    ok(&alice, &["delete", "@bob", short]);

    let at_alice: Vec<String> = recv_json(&alice, "1")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        at_alice,
        vec![
            format!("(reply to {short}) yes!"),
            format!("(reacted 👍 to {short})")
        ]
    );
    let at_bob: Vec<String> = recv_json(&bob, "1")
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        at_bob,
        vec![
            format!("(edited {short}) dinner at 8?"),
            format!("(deleted message {short})")
        ]
    );

    // The home keeps the whole conversation; history reads it offline.
    s.kill9();
    let history = ok(&alice, &["history", "@bob"]);
    assert!(history.contains("you: dinner at 7?"), "{history}");
    assert!(history.contains("@bob: (reply to"), "{history}");
    let bad = postern(&alice, &["react", "@bob", "ffffffff", "x"]);
    assert!(!bad.status.success());
}

#[test]
fn relays_and_invitations_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut relays = String::new();
    for i in 0..4 {
        relays.push_str(&format!(
            "[[relays]]\nname = \"r{i}\"\nlink = \"postern://relay?host=r{i}.example\"\n"
        ));
    }
    // Trusted on the second request rather than after 30 days.
    let s = ServerProc::start_with(
        dir.path(),
        &format!("{relays}[distributor]\nuntrusted_days = 0\n"),
    );
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    member(&s, &alice, "+14155552671", "alice");

    let first = ok(&alice, &["relay", "fetch"]);
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.starts_with("postern://relay?host=r"), "{first}");
    let held: serde_json::Value =
        serde_json::from_str(&ok(&alice, &["relay", "fetch", "--json"])).unwrap();
    assert_eq!(held["level"], 1);
    assert_eq!(held["invitations"], 2);

    let code = ok(&alice, &["invite", "create"]).trim().to_owned();
    ok(&bob, &["setup", s.link_file().to_str().unwrap()]);
    ok(&bob, &["request-code", "+14155552672"]);
    let sms = s.code("+14155552672");
    let bad = postern(
        &bob,
        &[
            "register",
            "+14155552672",
            "--code",
            &sms,
            "--invite",
            "0123",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invitation is unknown or already used"),
        "{err}"
    );
    ok(
        &bob,
        &[
            "register",
            "+14155552672",
            "--code",
            &sms,
            "--invite",
            &code,
        ],
    );
    let bobs: serde_json::Value =
        serde_json::from_str(&ok(&bob, &["relay", "fetch", "--json"])).unwrap();
    assert_eq!(bobs["level"], 1, "an invited member starts trusted");
    assert_eq!(bobs["links"], held["links"]);

    let wrong = postern(&bob, &["relay", "report", "postern://relay?made-up"]);
    assert!(!wrong.status.success());
    let report = ok(
        &bob,
        &["relay", "report", held["links"][0].as_str().unwrap()],
    );
    assert_eq!(report.lines().count(), 3, "{report}");

    let status: serde_json::Value = serde_json::from_str(&http_get(&s, "/relays")).unwrap();
    assert_eq!(status["relays"].as_array().unwrap().len(), 4);
    assert!(!status.to_string().contains("4155552671"));
}

fn http_get(s: &ServerProc, path: &str) -> String {
    use std::io::{Read, Write};
    let config = std::fs::read_to_string(&s.config).unwrap();
    let addr = config
        .lines()
        .find_map(|l| l.strip_prefix("http_listen = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// A volunteer runs `postern relay` in front of a cover site; a member
/// adds, lists, tests and removes it; `relay doctor` says what is wrong.
#[test]
fn a_relay_from_the_command_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // An operator key, for approving and retiring the relay.
    let op_key = dir.path().join("op.key");
    let out = ok(
        dir.path(),
        &["legal", "keygen", "--out", op_key.to_str().unwrap()],
    );
    let op_public = out
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .unwrap()
        .to_owned();
    let s = ServerProc::start_with(
        dir.path(),
        &format!("[legal]\noperators = [\"{op_public}\"]\n"),
    );
    let config = std::fs::read_to_string(&s.config).unwrap();
    let http = config
        .lines()
        .find_map(|l| l.strip_prefix("http_listen = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let operator = |args: &[&str]| {
        let mut v: Vec<String> = vec!["relay".into()];
        v.extend(args.iter().map(|a| a.to_string()));
        v.extend([
            "--server".into(),
            format!("http://{http}"),
            "--operator-key".into(),
            op_key.to_str().unwrap().into(),
        ]);
        Command::new(BIN).args(&v).output().unwrap()
    };
    // The cover site: an HTTPS server in this test's own runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cover = rt.block_on(postern_relay::testing::start_cover());
    let listen = format!("127.0.0.1:{}", free_port());
    let link_file = s.link_file();
    let relay_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--listen".into(),
            listen.clone(),
            "--cover".into(),
            cover.addr.to_string(),
            "--sni".into(),
            postern_relay::testing::SNI.into(),
            "--server".into(),
            link_file.to_str().unwrap().into(),
            "--data-dir".into(),
            dir.path().join("relay").to_str().unwrap().into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // Missing settings are named.
    let out = Command::new(BIN)
        .args(["relay", "--listen", &listen])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cover site"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A link must name an address members can dial.
    let mut args = relay_args(&[]);
    args[1] = "0.0.0.0:1".into();
    let out = Command::new(BIN).arg("relay").args(&args).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --public"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut relay = Command::new(BIN)
        .arg("relay")
        .args(relay_args(&["--qr", "--name", "cli-relay"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(relay.stdout.take().unwrap()).lines();
    let link = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("postern://relay?"))
        .expect("the relay prints its link");
    assert!(link.contains("&name=cli-relay"), "{link}");
    // The QR code follows the link.
    let qr: String = lines.by_ref().take(5).map(|l| l.unwrap()).collect();
    assert!(
        qr.contains('▀') || qr.contains('▄') || qr.contains('█'),
        "{qr}"
    );
    std::thread::spawn(move || for _ in lines {});

    let alice = dir.path().join("alice");
    member(&s, &alice, "+14155552671", "alice");
    assert!(ok(&alice, &["relay", "list"]).contains("No relays"));
    assert!(ok(&alice, &["relay", "add", &link]).contains("Added relay cli-relay"));
    let listed = ok(&alice, &["relay", "list"]);
    assert!(
        listed.contains("cli-relay") && listed.contains("not tried yet"),
        "{listed}"
    );
    assert!(
        !listed.contains("secret="),
        "list never shows the secret: {listed}"
    );
    let tested = ok(&alice, &["relay", "test"]);
    assert!(tested.starts_with("ok    cli-relay"), "{tested}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&alice, &["relay", "list", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "cli-relay");
    assert_eq!(json[0]["source"], "manual");

    // Doctor: the cover and the server are fine; the cover's name does not
    // resolve to this relay (it is a made-up name), which it says how to fix.
    let out = Command::new(BIN)
        .args(["relay", "doctor"])
        .args(relay_args(&[]))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("ok    the cover"), "{report}");
    assert!(report.contains("ok    something listens"), "{report}");
    assert!(report.contains("ok    the server answers"), "{report}");
    assert!(
        report.contains("FAIL  www.example.org resolves"),
        "{report}"
    );
    assert!(!out.status.success());

    // The relay registered itself (its key is not trusted: pending); an
    // operator approves it, then retires it.
    let host = listen.clone();
    let registered = |state: &str| {
        let out = operator(&["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["registered"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == host.as_str() && r["state"] == state)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !registered("pending") {
        assert!(Instant::now() < deadline, "the relay never registered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = operator(&["approve", &host]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(registered("active"));
    let out = operator(&["retire", &host]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("is retired"));
    assert!(registered("retired"));
    // Without a valid operator key: refused.
    let other_key = dir.path().join("other.key");
    ok(
        dir.path(),
        &["legal", "keygen", "--out", other_key.to_str().unwrap()],
    );
    let out = Command::new(BIN)
        .args([
            "relay",
            "approve",
            &host,
            "--server",
            &format!("http://{http}"),
            "--operator-key",
        ])
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gone = postern(&alice, &["relay", "remove", "nowhere:1"]);
    assert!(!gone.status.success());
    assert!(ok(&alice, &["relay", "remove", "cli-relay"]).contains("Removed 1"));
    assert!(ok(&alice, &["relay", "list"]).contains("No relays"));
    let _ = relay.kill();
    let _ = relay.wait();
}
