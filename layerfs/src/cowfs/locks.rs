//! Advisory file locks kept by the filesystem core: POSIX byte-range locks
//! (`fcntl(F_SETLK)`, 9P's `Tlock`/`Tgetlock`) and whole-file `flock`
//! locks, per inode.
//!
//! Semantics are POSIX's: a lock belongs to an owner (a process, or an open
//! file description for `flock`); one owner's locks never conflict with
//! each other, and setting a lock over a range the owner already holds
//! replaces, splits or merges what was there. Two locks conflict when they
//! belong to different owners, overlap, and at least one is a write lock.
//! Requests never block here: a conflicting request fails with `EAGAIN`
//! and the caller retries or waits (9P clients retry; the FUSE frontend
//! leaves locking to the kernel, see `fuse.rs`). `flock` locks and POSIX
//! locks are independent of each other, as on Linux.

use std::collections::HashMap;

use super::{Errno, FsResult, Ino};

/// What a lock request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    /// Shared (F_RDLCK, LOCK_SH).
    Read,
    /// Exclusive (F_WRLCK, LOCK_EX).
    Write,
    /// Release (F_UNLCK, LOCK_UN).
    Unlock,
}

/// A byte-range lock: bytes `start..=end` (`end == u64::MAX` reaches past
/// any end of file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PosixLock {
    pub typ: LockType,
    pub start: u64,
    pub end: u64,
    /// Who holds it (a process's lock owner id).
    pub owner: u64,
    /// The holder's process id, reported by `getlk`.
    pub pid: u32,
}

impl PosixLock {
    fn overlaps(&self, other: &PosixLock) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    fn conflicts(&self, other: &PosixLock) -> bool {
        self.owner != other.owner
            && self.overlaps(other)
            && (self.typ == LockType::Write || other.typ == LockType::Write)
    }
}

#[derive(Debug, Default)]
struct InodeLocks {
    /// Held byte-range locks (never `Unlock`), any order.
    posix: Vec<PosixLock>,
    /// Held flock locks: owner → exclusive?
    flock: HashMap<u64, bool>,
}

/// Most byte-range locks held on one inode; a request that would hold
/// more fails with ENOLCK (as when the kernel runs out of lock records).
/// It bounds the memory of the table and the cost of a request, linear in
/// the locks of its inode.
pub const MAX_LOCKS_PER_INODE: usize = 4096;
/// Most byte-range and flock locks held on one mount.
pub const MAX_LOCKS: usize = 65_536;

/// All locks of one mount.
#[derive(Debug, Default)]
pub struct LockTable {
    inodes: HashMap<Ino, InodeLocks>,
    /// Locks held over all inodes.
    held: usize,
}

impl LockTable {
    /// The first held lock that would block `probe`, if any (`F_GETLK`).
    pub fn test(&self, ino: Ino, probe: &PosixLock) -> Option<PosixLock> {
        if probe.typ == LockType::Unlock {
            return None;
        }
        self.inodes
            .get(&ino)?
            .posix
            .iter()
            .find(|held| held.conflicts(probe))
            .copied()
    }

    /// Sets or releases a byte-range lock without waiting (`F_SETLK`):
    /// `EAGAIN` when another owner's lock is in the way, and then nothing
    /// changes.
    pub fn set(&mut self, ino: Ino, lock: PosixLock) -> FsResult<()> {
        if lock.start > lock.end {
            return Err(Errno::EINVAL);
        }
        if self.test(ino, &lock).is_some() {
            return Err(Errno::EAGAIN);
        }
        let entry = self.inodes.entry(ino).or_default();
        // The common case, a range that touches none of the owner's own
        // locks, without rebuilding the list.
        let touches_own = |held: &PosixLock| {
            held.owner == lock.owner
                && held.start <= lock.end.saturating_add(1)
                && lock.start <= held.end.saturating_add(1)
        };
        if !entry.posix.iter().any(touches_own) {
            if lock.typ == LockType::Unlock {
                self.forget_if_empty(ino);
                return Ok(());
            }
            if entry.posix.len() >= MAX_LOCKS_PER_INODE || self.held >= MAX_LOCKS {
                self.forget_if_empty(ino);
                return Err(Errno(libc::ENOLCK));
            }
            entry.posix.push(lock);
            self.held += 1;
            return Ok(());
        }
        // Cut the owner's existing locks out of the new range.
        let mut kept = Vec::with_capacity(entry.posix.len() + 2);
        for &held in &entry.posix {
            if held.owner != lock.owner || !held.overlaps(&lock) {
                kept.push(held);
                continue;
            }
            if held.start < lock.start {
                kept.push(PosixLock {
                    end: lock.start - 1,
                    ..held
                });
            }
            if held.end > lock.end {
                kept.push(PosixLock {
                    start: lock.end + 1,
                    ..held
                });
            }
        }
        if lock.typ != LockType::Unlock {
            // Merge with the owner's adjacent locks of the same type.
            let mut merged = lock;
            kept.retain(|held| {
                let adjacent = held.owner == merged.owner
                    && held.typ == merged.typ
                    && (held.end.checked_add(1) == Some(merged.start)
                        || merged.end.checked_add(1) == Some(held.start));
                if adjacent {
                    merged.start = merged.start.min(held.start);
                    merged.end = merged.end.max(held.end);
                }
                !adjacent
            });
            kept.push(merged);
        }
        let before = entry.posix.len();
        let others = self.held - before;
        if kept.len() > before
            && (kept.len() > MAX_LOCKS_PER_INODE || others + kept.len() > MAX_LOCKS)
        {
            self.forget_if_empty(ino);
            return Err(Errno(libc::ENOLCK));
        }
        self.held = others + kept.len();
        entry.posix = kept;
        self.forget_if_empty(ino);
        Ok(())
    }

    /// Sets, converts or releases `owner`'s whole-file `flock` lock without
    /// waiting: `EWOULDBLOCK` (= `EAGAIN`) when another owner is in the way.
    pub fn flock(&mut self, ino: Ino, owner: u64, typ: LockType) -> FsResult<()> {
        let entry = self.inodes.entry(ino).or_default();
        match typ {
            LockType::Unlock => {
                if entry.flock.remove(&owner).is_some() {
                    self.held -= 1;
                }
            }
            LockType::Read | LockType::Write => {
                let exclusive = typ == LockType::Write;
                let blocked = entry
                    .flock
                    .iter()
                    .any(|(other, other_excl)| *other != owner && (exclusive || *other_excl));
                if blocked {
                    self.forget_if_empty(ino);
                    return Err(Errno::EAGAIN);
                }
                if !entry.flock.contains_key(&owner) {
                    if self.held >= MAX_LOCKS {
                        self.forget_if_empty(ino);
                        return Err(Errno(libc::ENOLCK));
                    }
                    self.held += 1;
                }
                entry.flock.insert(owner, exclusive);
            }
        }
        self.forget_if_empty(ino);
        Ok(())
    }

    /// Drops every lock `owner` holds on `ino` (its last close, or the end
    /// of a 9P session's fid).
    pub fn release_owner(&mut self, ino: Ino, owner: u64) {
        if let Some(entry) = self.inodes.get_mut(&ino) {
            let before = entry.posix.len() + entry.flock.len();
            entry.posix.retain(|held| held.owner != owner);
            entry.flock.remove(&owner);
            self.held -= before - (entry.posix.len() + entry.flock.len());
        }
        self.forget_if_empty(ino);
    }

    /// Drops all locks on `ino` (the inode is gone).
    pub fn forget(&mut self, ino: Ino) {
        if let Some(entry) = self.inodes.remove(&ino) {
            self.held -= entry.posix.len() + entry.flock.len();
        }
    }

    /// The byte-range locks held on `ino`, sorted by owner then start.
    pub fn held(&self, ino: Ino) -> Vec<PosixLock> {
        let mut locks = self
            .inodes
            .get(&ino)
            .map(|e| e.posix.clone())
            .unwrap_or_default();
        locks.sort_by_key(|l| (l.owner, l.start));
        locks
    }

    fn forget_if_empty(&mut self, ino: Ino) {
        if let Some(entry) = self.inodes.get(&ino) {
            if entry.posix.is_empty() && entry.flock.is_empty() {
                self.inodes.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locks_of_an_inode_and_a_mount_are_bounded() {
        let mut table = LockTable::default();
        let at = |i: u64| lock(LockType::Write, 2 * i, 2 * i, 1);
        for i in 0..MAX_LOCKS_PER_INODE as u64 {
            table.set(1, at(i)).unwrap();
        }
        let over = table.set(1, at(MAX_LOCKS_PER_INODE as u64));
        assert_eq!(over, Err(Errno(libc::ENOLCK)));
        assert_eq!(table.held(1).len(), MAX_LOCKS_PER_INODE);
        // Releasing, and locks that do not add a range, still work.
        table.set(1, lock(LockType::Unlock, 0, 0, 1)).unwrap();
        table.set(1, at(0)).unwrap();
        table.release_owner(1, 1);
        assert_eq!(table.held, 0);
        for ino in 0..(MAX_LOCKS / MAX_LOCKS_PER_INODE) as u64 {
            for i in 0..MAX_LOCKS_PER_INODE as u64 {
                table.set(ino, at(i)).unwrap();
            }
        }
        assert_eq!(table.set(999, at(0)), Err(Errno(libc::ENOLCK)));
        assert_eq!(
            table.flock(999, 5, LockType::Read),
            Err(Errno(libc::ENOLCK))
        );
        table.forget(0);
        table.flock(999, 5, LockType::Read).unwrap();
    }

    fn lock(typ: LockType, start: u64, end: u64, owner: u64) -> PosixLock {
        PosixLock {
            typ,
            start,
            end,
            owner,
            pid: owner as u32,
        }
    }

    #[test]
    fn readers_share_writers_exclude_and_owners_never_block_themselves() {
        let mut t = LockTable::default();
        t.set(1, lock(LockType::Read, 0, 99, 1)).unwrap();
        t.set(1, lock(LockType::Read, 50, 149, 2)).unwrap();
        assert_eq!(
            t.set(1, lock(LockType::Write, 90, 95, 3)),
            Err(Errno::EAGAIN)
        );
        // Nothing changed by the refused request.
        assert_eq!(t.held(1).len(), 2);
        // Owner 1 may upgrade where owner 2 does not overlap.
        t.set(1, lock(LockType::Write, 0, 10, 1)).unwrap();
        assert_eq!(
            t.test(1, &lock(LockType::Read, 5, 5, 2)).map(|l| l.owner),
            Some(1)
        );
        assert_eq!(t.test(1, &lock(LockType::Read, 5, 5, 1)), None);
        // Another inode is independent.
        t.set(2, lock(LockType::Write, 0, u64::MAX, 3)).unwrap();
    }

    #[test]
    fn unlocking_the_middle_splits_and_adjacent_locks_merge() {
        let mut t = LockTable::default();
        t.set(7, lock(LockType::Write, 0, 99, 1)).unwrap();
        t.set(7, lock(LockType::Unlock, 40, 59, 1)).unwrap();
        let held = t.held(7);
        assert_eq!(
            held.iter().map(|l| (l.start, l.end)).collect::<Vec<_>>(),
            vec![(0, 39), (60, 99)]
        );
        // Another owner fits in the hole.
        t.set(7, lock(LockType::Write, 40, 59, 2)).unwrap();
        t.release_owner(7, 2);
        t.set(7, lock(LockType::Write, 40, 59, 1)).unwrap();
        assert_eq!(
            t.held(7)
                .iter()
                .map(|l| (l.start, l.end))
                .collect::<Vec<_>>(),
            vec![(0, 99)]
        );
        // Downgrading part of a write lock leaves three pieces.
        t.set(7, lock(LockType::Read, 10, 19, 1)).unwrap();
        assert_eq!(t.held(7).len(), 3);
        t.release_owner(7, 1);
        assert!(t.held(7).is_empty());
        assert!(t.inodes.is_empty(), "empty entries are dropped");
    }

    #[test]
    fn to_end_of_file_ranges_and_bad_ranges() {
        let mut t = LockTable::default();
        t.set(1, lock(LockType::Write, 1000, u64::MAX, 1)).unwrap();
        assert!(t
            .test(1, &lock(LockType::Read, u64::MAX, u64::MAX, 2))
            .is_some());
        assert!(t.test(1, &lock(LockType::Read, 0, 999, 2)).is_none());
        t.set(1, lock(LockType::Unlock, 0, u64::MAX, 1)).unwrap();
        assert!(t.held(1).is_empty());
        assert_eq!(t.set(1, lock(LockType::Read, 5, 4, 1)), Err(Errno::EINVAL));
    }

    #[test]
    fn flock_is_whole_file_and_independent_of_posix_locks() {
        let mut t = LockTable::default();
        t.flock(1, 10, LockType::Read).unwrap();
        t.flock(1, 11, LockType::Read).unwrap();
        assert_eq!(t.flock(1, 12, LockType::Write), Err(Errno::EAGAIN));
        // Conversion by a holder is refused while another shares it.
        assert_eq!(t.flock(1, 10, LockType::Write), Err(Errno::EAGAIN));
        t.flock(1, 11, LockType::Unlock).unwrap();
        t.flock(1, 10, LockType::Write).unwrap();
        // POSIX locks do not see flock locks.
        t.set(1, lock(LockType::Write, 0, u64::MAX, 12)).unwrap();
        t.release_owner(1, 10);
        t.flock(1, 12, LockType::Write).unwrap();
    }

    /// Against a byte-by-byte model: after random set/unlock/release
    /// sequences, every byte's holders agree.
    #[test]
    fn random_sequences_agree_with_a_per_byte_model() {
        const LEN: u64 = 64;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut t = LockTable::default();
            // model[byte] = owner → typ
            let mut model: Vec<HashMap<u64, LockType>> = vec![HashMap::new(); LEN as usize];
            for _ in 0..60 {
                let owner = next() % 3;
                let a = next() % LEN;
                let b = next() % LEN;
                let (start, end) = (a.min(b), a.max(b));
                let typ = match next() % 4 {
                    0 => LockType::Unlock,
                    1 => LockType::Read,
                    _ => LockType::Write,
                };
                if next() % 10 == 0 {
                    t.release_owner(1, owner);
                    for byte in model.iter_mut() {
                        byte.remove(&owner);
                    }
                    continue;
                }
                let blocked = typ != LockType::Unlock
                    && (start..=end).any(|i| {
                        model[i as usize].iter().any(|(o, held)| {
                            *o != owner && (typ == LockType::Write || *held == LockType::Write)
                        })
                    });
                let result = t.set(1, lock(typ, start, end, owner));
                assert_eq!(result.is_err(), blocked);
                if !blocked {
                    for i in start..=end {
                        if typ == LockType::Unlock {
                            model[i as usize].remove(&owner);
                        } else {
                            model[i as usize].insert(owner, typ);
                        }
                    }
                }
                for i in 0..LEN {
                    let mut from_table: Vec<(u64, LockType)> = t
                        .held(1)
                        .iter()
                        .filter(|l| l.start <= i && i <= l.end)
                        .map(|l| (l.owner, l.typ))
                        .collect();
                    from_table.sort_by_key(|x| x.0);
                    let mut from_model: Vec<(u64, LockType)> =
                        model[i as usize].iter().map(|(o, t)| (*o, *t)).collect();
                    from_model.sort_by_key(|x| x.0);
                    assert_eq!(from_table, from_model, "byte {i}");
                }
                // An owner's locks never overlap each other and adjacent
                // same-type locks are merged.
                let held = t.held(1);
                for pair in held.windows(2) {
                    if pair[0].owner == pair[1].owner {
                        assert!(pair[0].end < pair[1].start);
                        assert!(
                            pair[0].typ != pair[1].typ || pair[0].end + 1 < pair[1].start,
                            "{pair:?}"
                        );
                    }
                }
            }
        }
    }
}
