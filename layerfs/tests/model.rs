//! Randomised operations (write, truncate, punch, rename, link, unlink) on a
//! mount of a lower tree, checked after every step against a plain model:
//! the mount and the model agree byte for byte, for many seeds; and a mount
//! recovered from each run's upper layer agrees too.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use common::store;
use layerfs::cowfs::{Caller, CowFs, Errno, MountConfig, RenameFlags, SetAttr, ROOT_INO};
use layerfs::{import_image, ImportOptions, SourceKind};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<String, Rc<RefCell<Vec<u8>>>>;

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn ino_of(fs: &CowFs, name: &str) -> Option<u64> {
    fs.lookup(ROOT_INO, name.as_bytes()).ok().map(|s| s.ino)
}

fn check(fs: &CowFs, model: &Model, step: usize, seed: u64) {
    for name in NAMES {
        match (model.get(name), ino_of(fs, name)) {
            (None, None) => {}
            (Some(content), Some(ino)) => {
                let content = content.borrow();
                let stat = fs.getattr(ino).unwrap();
                assert_eq!(
                    stat.size,
                    content.len() as u64,
                    "seed {seed} step {step}: size of {name}"
                );
                let got = fs.read(ino, 0, content.len() as u32 + 10).unwrap();
                assert!(
                    got == *content,
                    "seed {seed} step {step}: content of {name} differs"
                );
            }
            (m, f) => panic!(
                "seed {seed} step {step}: {name} in model {} in mount {}",
                m.is_some(),
                f.is_some()
            ),
        }
    }
}

#[test]
fn random_operations_agree_with_a_model() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut initial = Model::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (i, name) in NAMES.iter().take(3).enumerate() {
        let len = [300_000usize, 70_000, 5][i];
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(src.join(name), &data).unwrap();
        initial.insert(name.to_string(), Rc::new(RefCell::new(data)));
    }
    let options = ImportOptions {
        kind: Some(SourceKind::Directory),
        ..ImportOptions::default()
    };
    let tree = import_image(&store, "model", &src, &options)
        .unwrap()
        .image
        .tree
        .parse()
        .unwrap();

    let seeds = 40u64;
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let upper = tmp.path().join(format!("upper-{seed}"));
        let fs = CowFs::new(
            store.clone(),
            tree,
            MountConfig {
                upper_dir: upper.clone(),
                quota_bytes: 1 << 30,
                inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
            },
        )
        .unwrap();
        let mut model: Model = initial
            .iter()
            .map(|(k, v)| (k.clone(), Rc::new(RefCell::new(v.borrow().clone()))))
            .collect();
        for step in 0..150 {
            let name = NAMES[rng.below(NAMES.len() as u64) as usize];
            let other = NAMES[rng.below(NAMES.len() as u64) as usize];
            match rng.below(7) {
                0 | 1 => {
                    // write
                    let offset = rng.below(400_000);
                    let span = if rng.below(4) == 0 { 200_000 } else { 3000 };
                    let len = 1 + rng.below(span) as usize;
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let ino = match ino_of(&fs, name) {
                        Some(ino) => ino,
                        None => {
                            let stat = fs.create(ROOT_INO, name.as_bytes(), 0o644, ROOT).unwrap();
                            fs.release(stat.ino);
                            model.insert(name.into(), Rc::new(RefCell::new(Vec::new())));
                            stat.ino
                        }
                    };
                    fs.open(ino, false).unwrap();
                    fs.write(ino, offset, &data).unwrap();
                    fs.release(ino);
                    let mut content = model[name].borrow_mut();
                    let end = offset as usize + len;
                    if content.len() < end {
                        content.resize(end, 0);
                    }
                    content[offset as usize..end].copy_from_slice(&data);
                }
                2 => {
                    // truncate
                    if let Some(ino) = ino_of(&fs, name) {
                        let size = rng.below(400_000);
                        fs.setattr(
                            ino,
                            SetAttr {
                                size: Some(size),
                                ..SetAttr::default()
                            },
                        )
                        .unwrap();
                        model[name].borrow_mut().resize(size as usize, 0);
                    }
                }
                3 => {
                    // punch a hole
                    if let Some(ino) = ino_of(&fs, name) {
                        let offset = rng.below(300_000);
                        let len = rng.below(150_000);
                        fs.fallocate(
                            ino,
                            offset,
                            len,
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        )
                        .unwrap();
                        let mut content = model[name].borrow_mut();
                        let end = ((offset + len) as usize).min(content.len());
                        if (offset as usize) < end {
                            content[offset as usize..end].fill(0);
                        }
                    }
                }
                4 => {
                    // rename (replacing)
                    let result = fs.rename(
                        ROOT_INO,
                        name.as_bytes(),
                        ROOT_INO,
                        other.as_bytes(),
                        RenameFlags::default(),
                    );
                    let same_inode = match (model.get(name), model.get(other)) {
                        (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                        _ => false,
                    };
                    if same_inode {
                        // Two names of one inode: rename does nothing (POSIX).
                        result.unwrap();
                        check(&fs, &model, step, seed);
                        continue;
                    }
                    match model.remove(name) {
                        Some(content) => {
                            result.unwrap();
                            model.insert(other.into(), content);
                        }
                        None => assert_eq!(result, Err(Errno::ENOENT)),
                    }
                }
                5 => {
                    // hard link
                    let result =
                        ino_of(&fs, name).map(|ino| fs.link(ino, ROOT_INO, other.as_bytes()));
                    match (model.get(name).cloned(), model.contains_key(other)) {
                        (Some(content), false) => {
                            result.unwrap().unwrap();
                            model.insert(other.into(), content);
                        }
                        (Some(_), true) => assert_eq!(result.unwrap().unwrap_err(), Errno::EEXIST),
                        (None, _) => assert!(result.is_none()),
                    }
                }
                _ => {
                    // unlink
                    let result = fs.unlink(ROOT_INO, name.as_bytes());
                    match model.remove(name) {
                        Some(_) => result.unwrap(),
                        None => assert_eq!(result, Err(Errno::ENOENT)),
                    }
                }
            }
            check(&fs, &model, step, seed);
        }
        // The upper layer as the process leaves it recovers to the same
        // contents (every handle was closed, so every change is journaled).
        let used = fs.used_bytes();
        drop(fs);
        let (recovered, report) = CowFs::recover(
            store.clone(),
            tree,
            MountConfig {
                upper_dir: upper,
                quota_bytes: 1 << 30,
                inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
            },
        )
        .unwrap();
        assert_eq!(report.skipped, 0, "seed {seed}: {report:?}");
        check(&recovered, &model, usize::MAX, seed);
        assert_eq!(recovered.used_bytes(), used, "seed {seed}: quota use");
    }
}
