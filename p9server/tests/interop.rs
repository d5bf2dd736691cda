//! Other 9P2000.L clients than the kernel's against the server: diod's
//! client tools (`diodls`, `diodcat`, from Debian's `diod` package), which
//! go through diod's client library — the same library `mount.diod` uses.

use std::process::Command;
use std::sync::Arc;

use cas::{Store, StoreConfig};
use layerfs::cowfs::{CowFs, MountConfig};
use p9server::{Limits, Listen, Server};

/// Defect 11 of issue 14: the server answered `Tauth` with ECONNREFUSED;
/// diod's client library takes only ENOENT (diod's own answer when no
/// authentication is required) as "attach without authentication", so
/// none of diod's tools could talk to Strata.
#[test]
fn diods_client_tools_list_and_read_a_strata_mount() {
    if !fixtures::require::program("diodls") || !fixtures::require::program("diodcat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"served by strata\n").unwrap();
    std::fs::write(src.join("hello.txt"), b"hello, diod\n").unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    let options = layerfs::ImportOptions {
        kind: Some(layerfs::SourceKind::Directory),
        ..layerfs::ImportOptions::default()
    };
    let tree = layerfs::import_image(&store, "t", &src, &options)
        .unwrap()
        .image
        .tree
        .parse()
        .unwrap();
    let config = MountConfig {
        upper_dir: dir.path().join("upper"),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    let fs = Arc::new(CowFs::new(store, tree, config).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let resolver: p9server::Resolver =
        Arc::new(move |aname: &[u8]| (aname == b"/srv").then(|| fs.clone()));
    let listening = Server::new(resolver, Limits::default())
        .listen(
            runtime.handle(),
            &Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
    let Listen::Tcp(address) = listening.address else {
        unreachable!()
    };
    let server = address.to_string();

    let ls = Command::new("diodls")
        .args(["-s", &server, "-a", "/srv", "-t", "20", "/"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "diodls: {}{}",
        listed,
        String::from_utf8_lossy(&ls.stderr)
    );
    let mut names: Vec<&str> = listed.lines().map(str::trim).collect();
    names.sort();
    assert!(
        names.contains(&"etc") && names.contains(&"hello.txt"),
        "{names:?}"
    );

    let cat = Command::new("diodcat")
        .args([
            "-s",
            &server,
            "-a",
            "/srv",
            "-t",
            "20",
            "hello.txt",
            "etc/motd",
        ])
        .output()
        .unwrap();
    assert!(
        cat.status.success(),
        "diodcat: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello, diod\nserved by strata\n"
    );
}
