//! `snapctl volume` against a real `volume-server`: the commands a user
//! types, their output, their exit codes, and clear errors that change
//! nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Server;

/// `snapctl`, built beside `volume-server` when the workspace is tested
/// (`cargo test --workspace`, as `./test.sh` does).
fn snapctl() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_volume-server")).with_file_name("snapctl");
    fixtures::require::path(
        &path,
        "`cargo build -p snapshotter` (or testing the workspace)",
    )
    .then_some(path)
}

struct Cli {
    exe: PathBuf,
    home: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str], stdin: Option<&Path>) -> Output {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("volume")
            .arg("--volume-home")
            .arg(&self.home)
            .args(args);
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file).unwrap());
        }
        cmd.output().expect("run snapctl")
    }

    /// Runs and expects success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "snapctl volume {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code `code`; stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        stderr
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

#[test]
fn snapctl_volume_drives_the_server() {
    let Some(exe) = snapctl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cli = Cli {
        exe,
        home: home.clone(),
    };

    // No server yet: exit 8 and how to start one.
    let stderr = cli.fails(&["ls"], 8);
    assert!(stderr.contains("volume-server --home"), "{stderr}");

    let _server = Server::start(&home, 0);
    assert!(cli.ok(&["create", "data"]).contains("created volume data"));
    let listed = cli.ok(&["ls"]);
    assert!(listed.contains("data"), "{listed}");

    // Outside access: put from a file and from stdin, get, ls-files.
    let src = tmp.path().join("src.bin");
    let bytes = common::random_bytes("cli", 3 << 20);
    std::fs::write(&src, &bytes).unwrap();
    cli.ok(&["put", "data", "dir/blob.bin", src.to_str().unwrap()]);
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "hello\n").unwrap();
    let out = cli.run(&["put", "data", "notes.txt"], Some(&notes));
    assert!(out.status.success(), "{out:?}");
    let got = cli.run(&["get", "data", "dir/blob.bin"], None);
    assert!(got.status.success());
    assert!(got.stdout == bytes, "get returned other bytes");
    let files = cli.json(&["ls-files", "data"]);
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dir", "notes.txt"]);

    // A FUSE session: mount, write, umount (commits), read from outside.
    if fixtures::require::fuse() {
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let id = cli.ok(&["mount", "data", mnt.to_str().unwrap()]);
        assert!(id.trim().starts_with('s'), "{id}");
        assert_eq!(
            std::fs::read_to_string(mnt.join("notes.txt")).unwrap(),
            "hello\n"
        );
        std::fs::write(mnt.join("from-sandbox.txt"), "made inside\n").unwrap();
        let sessions = cli.ok(&["sessions"]);
        assert!(sessions.contains(id.trim()), "{sessions}");
        let ended = cli.ok(&["umount", mnt.to_str().unwrap()]);
        assert!(ended.contains("commit"), "{ended}");
        assert_eq!(
            cli.ok(&["get", "data", "from-sandbox.txt"]),
            "made inside\n"
        );
        assert!(cli.json(&["sessions"]).as_array().unwrap().is_empty());
    }

    // History and restore.
    let history = cli.json(&["history", "data"]);
    let seqs: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() >= 3, "{history}");
    assert_eq!(seqs.last(), Some(&1));
    cli.ok(&["restore", "data", "1"]);
    assert!(cli
        .json(&["ls-files", "data"])
        .as_array()
        .unwrap()
        .is_empty());

    // Bad input: clear errors with their exit codes, nothing changed.
    let before = cli.json(&["history", "data"]);
    let out_file = tmp.path().join("out.bin");
    let e = cli.fails(
        &["get", "data", "nope", "-o", out_file.to_str().unwrap()],
        3,
    );
    assert!(e.contains("nope"), "{e}");
    assert!(!out_file.exists(), "a failed get left a file");
    assert!(cli
        .fails(&["create", "../x"], 7)
        .contains("bad volume name"));
    assert!(cli.fails(&["create", "data"], 7).contains("exists"));
    assert!(cli.fails(&["info", "nope"], 3).contains("no volume"));
    assert!(cli.fails(&["restore", "data", "99"], 3).contains("99"));
    assert!(cli
        .fails(&["mount", "data", "/nonexistent/dir"], 3)
        .contains("mount point"));
    assert!(cli
        .fails(&["rm-file", "data", "missing"], 3)
        .contains("missing"));
    assert_eq!(cli.json(&["history", "data"]), before);

    assert!(cli.ok(&["rm", "data"]).contains("removed"));
    assert!(cli.json(&["ls"]).as_array().unwrap().is_empty());
    // The removed volume's data is reclaimed by `gc`.
    let gc = cli.json(&["gc"]);
    assert!(gc["swept_chunks"].as_u64().unwrap() > 0, "{gc}");
    assert!(cli.ok(&["gc"]).contains("swept 0 chunks"));
}
