//! The server against its own client over real sockets: every request of
//! the dialect with its effect checked through the filesystem core,
//! out-of-order replies, `Tflush`, limits, malformed input, many sessions.

use std::sync::Arc;
use std::time::Duration;

use cas::{Store, StoreConfig};
use layerfs::cowfs::{CowFs, MountConfig, ROOT_INO};
use p9server::client::{Client, ClientError};
use p9server::proto::{self, lock, Reply, Request};
use p9server::{Limits, Listen, Listening, Server};

const ENOENT: u32 = libc::ENOENT as u32;

struct Fixture {
    _dir: tempfile::TempDir,
    fs: Arc<CowFs>,
    runtime: tokio::runtime::Runtime,
    base: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello, 9p\n").unwrap();
    std::fs::write(src.join("sub/a.txt"), b"aaaa").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("sub/deeper/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("hello.txt", src.join("link")).unwrap();
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
    let fs = CowFs::new(
        store,
        tree,
        MountConfig {
            upper_dir: dir.path().join("upper"),
            quota_bytes: 1 << 30,
            inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
        },
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        base: dir.path().to_path_buf(),
        _dir: dir,
        fs: Arc::new(fs),
        runtime,
    }
}

impl Fixture {
    fn serve(&self, listen: Listen, limits: Limits) -> Listening {
        let fs = self.fs.clone();
        let resolver: p9server::Resolver = Arc::new(move |aname: &[u8]| {
            (aname.is_empty() || aname == b"main").then(|| fs.clone())
        });
        Server::new(resolver, limits)
            .listen(self.runtime.handle(), &listen)
            .unwrap()
    }

    fn unix(&self, name: &str) -> Listening {
        self.serve(Listen::Unix(self.base.join(name)), Limits::default())
    }
}

fn remote(r: Result<impl std::fmt::Debug, ClientError>) -> u32 {
    match r {
        Err(ClientError::Remote(e)) => e,
        other => panic!("expected an Rlerror, got {other:?}"),
    }
}

fn read_all(c: &mut Client, fid: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = c.read(fid, out.len() as u64, 64 * 1024).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

fn every_operation(address: &Listen, fs: &CowFs) {
    let mut c = Client::connect(address, 256 * 1024).unwrap();
    assert_eq!(c.msize, 256 * 1024);
    let root = c.attach(0, "", 0).unwrap();
    assert_eq!(root.typ, proto::qid_type::DIR);
    assert_eq!(remote(c.attach(99, "nope", 0)), ENOENT);
    assert_eq!(
        remote(c.call(&Request::Auth {
            afid: 5,
            uname: b"root".to_vec(),
            aname: Vec::new(),
            n_uname: 0,
        })),
        ENOENT
    );

    // Walk and read a lower file; a walk that fails part-way reports the
    // prefix and makes no fid.
    let qids = c.walk(0, 1, "sub/deeper/big.bin").unwrap();
    assert_eq!(qids.len(), 3);
    c.lopen(1, libc::O_RDONLY as u32).unwrap();
    let big = read_all(&mut c, 1);
    assert_eq!(big.len(), 300_000);
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u32 * 7 % 251) as u8));
    match c.call(&Request::Walk {
        fid: 0,
        newfid: 2,
        names: vec![b"sub".to_vec(), b"missing".to_vec()],
    }) {
        Ok(Reply::Walk { qids }) => assert_eq!(qids.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(remote(c.getattr(2)), libc::EBADF as u32);
    assert_eq!(remote(c.walk(0, 2, "missing")), ENOENT);

    // Create, write, read back, stat; the core sees the same file.
    c.walk(0, 2, "").unwrap();
    c.lcreate(2, "new.txt", 0o640).unwrap();
    assert_eq!(c.write(2, 0, b"written over 9p").unwrap(), 15);
    assert_eq!(c.write(2, 15, b", appended").unwrap(), 10);
    assert_eq!(
        &c.read(2, 0, 100).unwrap()[..],
        b"written over 9p, appended"
    );
    c.call(&Request::Fsync {
        fid: 2,
        datasync: 0,
    })
    .unwrap();
    match c.getattr(2).unwrap() {
        Reply::Getattr { mode, size, .. } => {
            assert_eq!(mode, libc::S_IFREG | 0o640);
            assert_eq!(size, 25);
        }
        r => panic!("{r:?}"),
    }
    c.clunk(2).unwrap();
    let ino = fs.lookup(ROOT_INO, b"new.txt").unwrap().ino;
    assert_eq!(fs.read(ino, 0, 100).unwrap(), b"written over 9p, appended");

    // mkdir, symlink, readlink, link, mknod.
    c.call(&Request::Mkdir {
        dfid: 0,
        name: b"d".to_vec(),
        mode: 0o755,
        gid: 7,
    })
    .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().gid, 7);
    c.call(&Request::Symlink {
        fid: 0,
        name: b"s".to_vec(),
        target: b"new.txt".to_vec(),
        gid: 0,
    })
    .unwrap();
    c.walk(0, 3, "s").unwrap();
    assert_eq!(
        c.call(&Request::Readlink { fid: 3 }).unwrap(),
        Reply::Readlink {
            target: b"new.txt".to_vec()
        }
    );
    c.clunk(3).unwrap();
    c.walk(0, 3, "new.txt").unwrap();
    c.call(&Request::Link {
        dfid: 0,
        fid: 3,
        name: b"hard".to_vec(),
    })
    .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"hard").unwrap().ino, ino);
    assert_eq!(fs.getattr(ino).unwrap().nlink, 2);
    c.call(&Request::Mknod {
        dfid: 0,
        name: b"fifo".to_vec(),
        mode: libc::S_IFIFO | 0o600,
        major: 0,
        minor: 0,
        gid: 0,
    })
    .unwrap();
    assert_eq!(
        fs.lookup(ROOT_INO, b"fifo").unwrap().kind,
        layerfs::cowfs::FileKind::Fifo
    );

    // setattr: chmod, chown, truncate, times.
    c.call(&Request::Setattr {
        fid: 3,
        valid: proto::setattr::MODE
            | proto::setattr::UID
            | proto::setattr::SIZE
            | proto::setattr::MTIME
            | proto::setattr::MTIME_SET,
        mode: 0o600,
        uid: 1234,
        gid: 0,
        size: 7,
        atime_sec: 0,
        atime_nsec: 0,
        mtime_sec: 1_000_000,
        mtime_nsec: 5,
    })
    .unwrap();
    let st = fs.getattr(ino).unwrap();
    assert_eq!((st.perm, st.uid, st.size), (0o600, 1234, 7));
    assert_eq!((st.mtime.secs, st.mtime.nanos), (1_000_000, 5));

    // Extended attributes: set through xattrcreate + write + clunk, then
    // read back by name and in the list; removed with size 0.
    c.walk(0, 4, "new.txt").unwrap();
    c.call(&Request::Xattrcreate {
        fid: 4,
        name: b"user.color".to_vec(),
        size: 4,
        flags: 0,
    })
    .unwrap();
    c.write(4, 0, b"blue").unwrap();
    c.clunk(4).unwrap();
    assert_eq!(fs.getxattr(ino, b"user.color").unwrap(), b"blue");
    match c
        .call(&Request::Xattrwalk {
            fid: 3,
            newfid: 4,
            name: b"user.color".to_vec(),
        })
        .unwrap()
    {
        Reply::Xattrwalk { size } => assert_eq!(size, 4),
        r => panic!("{r:?}"),
    }
    assert_eq!(&c.read(4, 0, 100).unwrap()[..], b"blue");
    c.clunk(4).unwrap();
    c.call(&Request::Xattrwalk {
        fid: 3,
        newfid: 4,
        name: Vec::new(),
    })
    .unwrap();
    assert_eq!(&c.read(4, 0, 100).unwrap()[..], b"user.color\0");
    c.clunk(4).unwrap();
    assert_eq!(
        remote(c.call(&Request::Xattrwalk {
            fid: 3,
            newfid: 4,
            name: b"user.none".to_vec(),
        })),
        libc::ENODATA as u32
    );
    c.walk(0, 4, "new.txt").unwrap();
    c.call(&Request::Xattrcreate {
        fid: 4,
        name: b"user.color".to_vec(),
        size: 0,
        flags: 2,
    })
    .unwrap();
    c.clunk(4).unwrap();
    assert!(fs.listxattr(ino).unwrap().is_empty());

    // Rename (fid form and renameat), unlinkat, remove.
    c.call(&Request::Rename {
        fid: 3,
        dfid: 0,
        name: b"renamed.txt".to_vec(),
    })
    .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"renamed.txt").unwrap().ino, ino);
    c.call(&Request::Renameat {
        olddirfid: 0,
        oldname: b"renamed.txt".to_vec(),
        newdirfid: 0,
        newname: b"again.txt".to_vec(),
    })
    .unwrap();
    assert_eq!(
        fs.lookup(ROOT_INO, b"renamed.txt").unwrap_err(),
        layerfs::cowfs::Errno::ENOENT
    );
    c.call(&Request::Unlinkat {
        dirfid: 0,
        name: b"hard".to_vec(),
        flags: 0,
    })
    .unwrap();
    assert_eq!(
        remote(c.call(&Request::Unlinkat {
            dirfid: 0,
            name: b"sub".to_vec(),
            flags: libc::AT_REMOVEDIR as u32,
        })),
        libc::ENOTEMPTY as u32
    );
    c.call(&Request::Unlinkat {
        dirfid: 0,
        name: b"d".to_vec(),
        flags: libc::AT_REMOVEDIR as u32,
    })
    .unwrap();
    c.walk(0, 5, "fifo").unwrap();
    c.call(&Request::Remove { fid: 5 }).unwrap();
    assert!(fs.lookup(ROOT_INO, b"fifo").is_err());
    assert_eq!(remote(c.clunk(5)), libc::EBADF as u32);

    // readdir lists ".", ".." and the names, resumable by offset.
    c.walk(0, 6, "").unwrap();
    c.lopen(6, libc::O_RDONLY as u32 | libc::O_DIRECTORY as u32)
        .unwrap();
    let mut names: Vec<String> = c
        .readdir_all(6)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".", "..", "again.txt", "hello.txt", "link", "s", "sub"]
    );
    match c.call(&Request::Statfs { fid: 0 }).unwrap() {
        Reply::Statfs { bsize, namelen, .. } => assert_eq!((bsize, namelen), (4096, 255)),
        r => panic!("{r:?}"),
    }

    // Locks: a second session's conflicting lock is BLOCKED until the
    // first unlocks; getlock reports the holder.
    let mut other = Client::connect(address, 64 * 1024).unwrap();
    other.attach(0, "main", 0).unwrap();
    other.walk(0, 1, "hello.txt").unwrap();
    other.lopen(1, libc::O_RDWR as u32).unwrap();
    c.walk(0, 7, "hello.txt").unwrap();
    c.lopen(7, libc::O_RDWR as u32).unwrap();
    let lock_req = |typ, proc_id| Request::Lock {
        fid: if proc_id == 10 { 7 } else { 1 },
        typ,
        flags: 0,
        start: 0,
        length: 0,
        proc_id,
        client_id: b"guest".to_vec(),
    };
    assert_eq!(
        c.call(&lock_req(lock::WRLCK, 10)).unwrap(),
        Reply::Lock {
            status: lock::SUCCESS
        }
    );
    assert_eq!(
        other.call(&lock_req(lock::RDLCK, 20)).unwrap(),
        Reply::Lock {
            status: lock::BLOCKED
        }
    );
    match other
        .call(&Request::Getlock {
            fid: 1,
            typ: lock::RDLCK,
            start: 0,
            length: 10,
            proc_id: 20,
            client_id: b"guest".to_vec(),
        })
        .unwrap()
    {
        Reply::Getlock { typ, proc_id, .. } => assert_eq!((typ, proc_id), (lock::WRLCK, 10)),
        r => panic!("{r:?}"),
    }
    // Ending the holding session releases its locks.
    drop(c);
    let mut granted = false;
    for _ in 0..200 {
        if other.call(&lock_req(lock::RDLCK, 20)).unwrap()
            == (Reply::Lock {
                status: lock::SUCCESS,
            })
        {
            granted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(granted, "the lock of a closed session was never released");
}

#[test]
fn every_operation_over_unix_and_tcp() {
    let f = fixture();
    let unix = f.unix("9p.sock");
    every_operation(&unix.address, &f.fs);
    // Same again over TCP (names created above are gone or renamed).
    for name in ["again.txt", "s"] {
        f.fs.unlink(ROOT_INO, name.as_bytes()).unwrap();
    }
    let tcp = f.serve(
        Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        Limits::default(),
    );
    every_operation(&tcp.address, &f.fs);
}

#[test]
fn inherited_socket_serves_one_session() {
    let f = fixture();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::IntoRawFd;
    let _listening = f.serve(Listen::Fd(theirs.into_raw_fd()), Limits::default());
    let mut c = Client::over(Box::new(ours), 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    c.walk(0, 1, "hello.txt").unwrap();
    c.lopen(1, 0).unwrap();
    assert_eq!(&c.read(1, 0, 100).unwrap()[..], b"hello, 9p\n");
}

#[test]
fn replies_come_out_of_order_and_flush_orders_after_its_request() {
    let f = fixture();
    let l = f.unix("9p.sock");
    let mut c = Client::connect(&l.address, 1 << 20).unwrap();
    c.attach(0, "", 0).unwrap();
    c.walk(0, 1, "").unwrap();
    c.lcreate(1, "slow.bin", 0o644).unwrap();
    let chunk = vec![0x5au8; 1 << 19];
    // A sync of many dirty megabytes is slow; a getattr sent right after
    // it is answered first.
    let mut out_of_order = false;
    for round in 0..5u64 {
        for i in 0..16u64 {
            c.write(1, (round * 16 + i) * chunk.len() as u64, &chunk)
                .unwrap();
        }
        let slow = c
            .send(&Request::Fsync {
                fid: 1,
                datasync: 0,
            })
            .unwrap();
        let fast = c
            .send(&Request::Getattr {
                fid: 0,
                mask: proto::getattr::BASIC,
            })
            .unwrap();
        let first = c.recv().unwrap().0;
        let second = c.recv().unwrap().0;
        let mut tags = [first, second];
        tags.sort();
        let mut want = [slow, fast];
        want.sort();
        assert_eq!(tags, want, "each request is answered exactly once");
        out_of_order |= first == fast;
    }
    assert!(out_of_order, "no reply ever overtook a slow one");

    // Tflush: Rflush never precedes the reply to the flushed request, and
    // every request is answered at most once.
    for _ in 0..50 {
        let read = c
            .send(&Request::Read {
                fid: 1,
                offset: 0,
                count: 1 << 19,
            })
            .unwrap();
        let flush = c.send(&Request::Flush { oldtag: read }).unwrap();
        let (t1, r1) = c.recv().unwrap();
        if t1 == read {
            assert!(matches!(r1, Reply::Read { .. }));
            let (t2, r2) = c.recv().unwrap();
            assert_eq!((t2, r2), (flush, Reply::Flush {}));
        } else {
            assert_eq!((t1, r1), (flush, Reply::Flush {}));
        }
    }
    // A flush of an unknown tag is answered at once.
    let tag = c.send(&Request::Flush { oldtag: 4321 }).unwrap();
    assert_eq!(c.recv().unwrap(), (tag, Reply::Flush {}));
    // And the session still works.
    assert_eq!(c.read(1, 0, 4).unwrap().len(), 4);
}

/// A client may send a request with a tag as soon as the reply to the last
/// request with that tag has arrived, as diod's tools do with tag 0 for
/// every request: the server must not see the tag as still in flight
/// because the thread that sent the reply has not yet let go of it.
#[test]
fn a_tag_is_free_again_as_soon_as_its_reply_arrives() {
    let f = fixture();
    let l = f.unix("9p.sock");
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let mut c = Client::connect(&l.address, 65536).unwrap();
                c.attach(0, "", 0).unwrap();
                // A setattr that changes nothing is worked on off the
                // runtime's threads, which is where the reply goes out
                // before the tag is let go.
                let setattr = Request::Setattr {
                    fid: 0,
                    valid: 0,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    atime_sec: 0,
                    atime_nsec: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                };
                for i in 0..5_000 {
                    c.send_tagged(0, &setattr).unwrap();
                    let (tag, reply) = c
                        .recv()
                        .unwrap_or_else(|e| panic!("request {i} with tag 0: {e}"));
                    assert_eq!((tag, reply), (0, Reply::Setattr {}));
                }
            });
        }
    });
}

/// A pipelining client's requests are worked on off the runtime's threads
/// (the session's lane) in the order they were sent: walks to new fids and
/// then requests on those fids, all sent before any reply is read, all
/// succeed; flushes of queued requests are answered after them or instead
/// of them, and each request at most once.
#[test]
fn a_pipelining_clients_requests_keep_their_order() {
    let f = fixture();
    let l = f.unix("9p.sock");
    let mut c = Client::connect(&l.address, 1 << 20).unwrap();
    c.attach(0, "", 0).unwrap();
    let names = vec![b"sub".to_vec(), b"a.txt".to_vec()];
    for round in 0..50u32 {
        let mut sent = Vec::new();
        for i in 0..16u32 {
            let fid = 100 + i;
            let walk = Request::Walk {
                fid: 0,
                newfid: fid,
                names: names.clone(),
            };
            sent.push((c.send(&walk).unwrap(), "walk"));
            let getattr = Request::Getattr {
                fid,
                mask: proto::getattr::BASIC,
            };
            sent.push((c.send(&getattr).unwrap(), "getattr"));
            let open = Request::Lopen {
                fid,
                flags: libc::O_RDONLY as u32,
            };
            sent.push((c.send(&open).unwrap(), "lopen"));
        }
        // A flush of the last getattr, still queued or just answered.
        let flushed = sent[sent.len() - 2].0;
        let flush = c.send(&Request::Flush { oldtag: flushed }).unwrap();
        let mut replies = std::collections::HashMap::new();
        let mut order = Vec::new();
        // Everything but the flushed request is answered; the flushed one
        // is answered before the flush or not at all.
        let answered = |replies: &std::collections::HashMap<u16, Reply>| {
            replies.contains_key(&flush)
                && sent
                    .iter()
                    .all(|(tag, _)| *tag == flushed || replies.contains_key(tag))
        };
        while !answered(&replies) {
            let (tag, reply) = c.recv().unwrap();
            order.push(tag);
            assert!(
                replies.insert(tag, reply).is_none(),
                "tag {tag} answered twice"
            );
        }
        for (tag, what) in &sent {
            if let Some(Reply::Lerror { ecode }) = replies.get(tag) {
                panic!("{what} (round {round}) failed: errno {ecode}");
            }
        }
        if let Some(at) = order.iter().position(|t| *t == flushed) {
            let flush_at = order.iter().position(|t| *t == flush).unwrap();
            assert!(at < flush_at, "Rflush came before the flushed reply");
        }
        for i in 0..16u32 {
            c.clunk(100 + i).unwrap();
        }
    }
}

#[test]
fn thousands_of_fids_and_the_fid_limit() {
    let f = fixture();
    let l = f.unix("9p.sock");
    let mut c = Client::connect(&l.address, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    for fid in 1..=5000u32 {
        let path = ["hello.txt", "sub/a.txt", "sub", "link"][fid as usize % 4];
        c.walk(0, fid, path).unwrap();
    }
    for fid in 1..=5000u32 {
        assert!(matches!(c.getattr(fid).unwrap(), Reply::Getattr { .. }));
    }
    for fid in 1..=5000u32 {
        c.clunk(fid).unwrap();
    }

    let limited = f.serve(
        Listen::Unix(f.base.join("limited.sock")),
        Limits {
            max_fids: 100,
            ..Limits::default()
        },
    );
    let mut c = Client::connect(&limited.address, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    for fid in 1..100u32 {
        c.walk(0, fid, "sub").unwrap();
    }
    assert_eq!(remote(c.walk(0, 100, "sub")), libc::EMFILE as u32);
    // Another session has its own allowance.
    let mut d = Client::connect(&limited.address, 65536).unwrap();
    d.attach(0, "", 0).unwrap();
    d.walk(0, 1, "sub").unwrap();
    // Clunking makes room again.
    c.clunk(5).unwrap();
    c.walk(0, 100, "sub").unwrap();
}

#[test]
fn malformed_messages_hurt_only_their_session() {
    let f = fixture();
    let l = f.unix("9p.sock");
    let mut good = Client::connect(&l.address, 65536).unwrap();
    good.attach(0, "", 0).unwrap();
    good.walk(0, 1, "hello.txt").unwrap();
    good.lopen(1, 0).unwrap();

    let mut bad = Client::connect(&l.address, 65536).unwrap();
    // An unknown type: Rlerror(EOPNOTSUPP) with the tag.
    bad.send_raw(&[7, 0, 0, 0, 200, 9, 0]).unwrap();
    assert_eq!(
        bad.recv().unwrap(),
        (
            9,
            Reply::Lerror {
                ecode: libc::EOPNOTSUPP as u32
            }
        )
    );
    // A walk whose name length runs past the message: Rlerror(EINVAL).
    bad.send_raw(&[
        20, 0, 0, 0, 110, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 200, 0, b'x',
    ])
    .unwrap();
    assert_eq!(
        bad.recv().unwrap(),
        (
            3,
            Reply::Lerror {
                ecode: libc::EINVAL as u32
            }
        )
    );
    // Random bytes in well-framed messages: each gets a reply or is a
    // valid request; the session survives them all.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let len = (next() % 40) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Avoid requests that legitimately wait (version) or are answered
        // by a later message (flush of a tag in flight is fine too).
        if body.first() == Some(&100) {
            body[0] = 101;
        }
        if body.len() < 3 {
            body.resize(3, 0);
        }
        let mut msg = ((body.len() + 4) as u32).to_le_bytes().to_vec();
        msg.extend_from_slice(&body);
        bad.send_raw(&msg).unwrap();
        bad.recv().unwrap();
    }
    // A size past msize closes that connection...
    bad.send_raw(&(10u32 << 20).to_le_bytes()).unwrap();
    let closed = matches!(
        bad.recv(),
        Err(ClientError::Io(_)) | Err(ClientError::Unexpected(_))
    );
    assert!(closed, "an oversize message must close its connection");
    // ...and the other session never noticed.
    assert_eq!(&good.read(1, 0, 5).unwrap()[..], b"hello");
    assert!(
        l.counters()
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[test]
fn many_sessions_at_once() {
    let f = fixture();
    let l = f.unix("9p.sock");
    let address = l.address.clone();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&address, 65536).unwrap();
                c.attach(0, "", 1000 + i).unwrap();
                c.walk(0, 1, "").unwrap();
                let name = format!("file-{i}");
                c.lcreate(1, &name, 0o600).unwrap();
                let data = format!("session {i}").repeat(100);
                c.write(1, 0, data.as_bytes()).unwrap();
                c.clunk(1).unwrap();
                c.walk(0, 2, &name).unwrap();
                c.lopen(2, 0).unwrap();
                assert_eq!(read_all(&mut c, 2), data.as_bytes());
                match c.getattr(2).unwrap() {
                    Reply::Getattr { uid, .. } => assert_eq!(uid, 1000 + i),
                    r => panic!("{r:?}"),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(f.fs.readdir(ROOT_INO, 0).unwrap().len(), 2 + 3 + 64);
}

#[test]
fn a_client_that_comes_back_quickly_is_polled_for_and_a_quiet_one_is_not() {
    use std::sync::atomic::Ordering::Relaxed;
    let f = fixture();
    let serve = |name: &str, max_wait: Duration| {
        let poll = p9server::PollLimits {
            max_wait,
            max_pollers: 1,
        };
        f.serve(
            Listen::Unix(f.base.join(name)),
            Limits {
                poll,
                ..Limits::default()
            },
        )
    };
    let requests = |l: &Listening, c: &mut Client, n: usize, gap: Duration| {
        for _ in 0..n {
            std::thread::sleep(gap);
            assert!(matches!(c.getattr(0).unwrap(), Reply::Getattr { .. }));
        }
        (
            l.counters().polls.load(Relaxed),
            l.counters().polls_caught.load(Relaxed),
        )
    };

    // A client coming back within the 5 ms maximum: the window grows
    // until polling catches its requests.
    let l = serve("polled.sock", Duration::from_millis(5));
    let mut c = Client::connect(&l.address, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    let (polls, caught) = requests(&l, &mut c, 40, Duration::from_millis(1));
    assert!(polls > 0 && caught > 0, "polls {polls}, caught {caught}");
    // Once it stays away longer than the maximum, the window closes and
    // the connection sleeps without polling.
    requests(&l, &mut c, 16, Duration::from_millis(20));
    let (closed, _) = requests(&l, &mut c, 0, Duration::ZERO);
    let (after, _) = requests(&l, &mut c, 5, Duration::from_millis(20));
    assert_eq!(after, closed, "a quiet client is not polled for");

    // Polling off: never.
    let off = serve("unpolled.sock", Duration::ZERO);
    let mut c = Client::connect(&off.address, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    assert_eq!(requests(&off, &mut c, 20, Duration::from_millis(1)), (0, 0));
}

#[test]
fn listen_addresses_parse() {
    assert_eq!(
        "unix:/run/x.sock".parse::<Listen>().unwrap(),
        Listen::Unix("/run/x.sock".into())
    );
    assert_eq!(
        "tcp:127.0.0.1:564".parse::<Listen>().unwrap(),
        Listen::Tcp("127.0.0.1:564".parse().unwrap())
    );
    assert_eq!("fd:3".parse::<Listen>().unwrap(), Listen::Fd(3));
    for bad in ["unix:", "tcp:nowhere", "fd:x", "http://x"] {
        assert!(bad.parse::<Listen>().is_err(), "{bad}");
    }
}
