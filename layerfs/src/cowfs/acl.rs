//! POSIX access control lists, kept as the `system.posix_acl_*`
//! extended attributes in the kernel's binary form, with the rules a
//! local filesystem applies to them.
//!
//! The FUSE frontend lets the kernel cache and enforce ACLs
//! (`FUSE_POSIX_ACL`); the kernel then leaves to the server what ext4
//! does itself: an access ACL sets the group-class and other bits of the
//! mode (and one that says no more than the mode is not stored at all),
//! and a `chmod` rewrites the access ACL's owner, mask (or group) and
//! other entries. The core does both, so the 9P frontend gets them too.
//!
//! Inheriting a directory's default ACL at creation is not done: the
//! kernel applies the umask before a FUSE server sees the mode (the
//! mount does not ask for `FUSE_DONT_MASK`), as it did before ACLs were
//! enforced.

use super::Errno;

/// The extended attribute holding a file's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The extended attribute holding a directory's default ACL.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// The version the kernel writes in an ACL's header.
const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One entry: tag, permission bits (rwx), and the uid or gid of a named
/// user or group entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// Decodes and checks an ACL as the kernel's `posix_acl_valid` does:
/// entries in tag order, named ones in id order without repeats, exactly
/// one owner, owning-group and other entry, a mask whenever a named entry
/// exists. EINVAL otherwise.
fn parse(value: &[u8]) -> Result<Vec<AclEntry>, Errno> {
    if value.len() < HEADER || (value.len() - HEADER) % ENTRY != 0 {
        return Err(Errno::EINVAL);
    }
    let word =
        |at: usize| u32::from_le_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
    let half = |at: usize| u16::from_le_bytes([value[at], value[at + 1]]);
    if word(0) != VERSION {
        return Err(Errno::EINVAL);
    }
    let entries: Vec<AclEntry> = value[HEADER..]
        .chunks_exact(ENTRY)
        .enumerate()
        .map(|(i, _)| {
            let at = HEADER + i * ENTRY;
            AclEntry {
                tag: half(at),
                perm: half(at + 2),
                id: word(at + 4),
            }
        })
        .collect();
    let mut previous: Option<AclEntry> = None;
    let (mut owner, mut group, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
    for e in &entries {
        if e.perm & !0o7 != 0 {
            return Err(Errno::EINVAL);
        }
        match e.tag {
            USER_OBJ => owner += 1,
            GROUP_OBJ => group += 1,
            OTHER => other += 1,
            MASK => mask += 1,
            USER | GROUP => named += 1,
            _ => return Err(Errno::EINVAL),
        }
        if let Some(p) = previous {
            let named_kind = matches!(e.tag, USER | GROUP);
            if e.tag < p.tag || (e.tag == p.tag && (!named_kind || e.id <= p.id)) {
                return Err(Errno::EINVAL);
            }
        }
        previous = Some(*e);
    }
    if owner != 1 || group != 1 || other != 1 || mask > 1 || (named > 0 && mask == 0) {
        return Err(Errno::EINVAL);
    }
    Ok(entries)
}

fn encode(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * ENTRY);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// What setting access ACL `value` on a file of mode `mode` does, as
/// ext4's `posix_acl_update_mode`: the new mode (owner bits from the
/// owner entry, group bits from the mask — or the owning group's entry
/// when there is no mask —, other bits from the other entry), and the
/// value to store — `None` when the ACL says no more than that mode.
/// EINVAL for a malformed ACL.
pub fn set_access(mode: u32, value: &[u8]) -> Result<(u32, Option<Vec<u8>>), Errno> {
    let entries = parse(value)?;
    let perm_of = |tag: u16| {
        entries
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| u32::from(e.perm))
    };
    let owner = perm_of(USER_OBJ).unwrap_or(0);
    let group = perm_of(MASK).or_else(|| perm_of(GROUP_OBJ)).unwrap_or(0);
    let other = perm_of(OTHER).unwrap_or(0);
    let mode = (mode & !0o777) | owner << 6 | group << 3 | other;
    let equivalent = entries.len() == 3;
    Ok((mode, (!equivalent).then(|| value.to_vec())))
}

/// Checks a default ACL (EINVAL when malformed).
pub fn check(value: &[u8]) -> Result<(), Errno> {
    parse(value).map(|_| ())
}

/// Access ACL `value` after a `chmod` to `mode`, as ext4's
/// `posix_acl_chmod`: the owner, mask (or, without one, owning group)
/// and other entries take the new mode's bits; named entries keep
/// theirs. `None` when `value` does not decode (left as it is).
pub fn chmod(value: &[u8], mode: u32) -> Option<Vec<u8>> {
    let mut entries = parse(value).ok()?;
    let has_mask = entries.iter().any(|e| e.tag == MASK);
    for e in &mut entries {
        let bits = match e.tag {
            USER_OBJ => mode >> 6,
            MASK => mode >> 3,
            GROUP_OBJ if !has_mask => mode >> 3,
            OTHER => mode,
            _ => continue,
        };
        e.perm = (bits & 0o7) as u16;
    }
    Some(encode(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let entries: Vec<AclEntry> = entries
            .iter()
            .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
            .collect();
        encode(&entries)
    }

    const U: u32 = u32::MAX; // the id field of unnamed entries

    #[test]
    fn a_minimal_acl_is_the_mode_and_is_not_stored() {
        let value = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]);
        assert_eq!(set_access(0o100777, &value), Ok((0o100640, None)));
    }

    #[test]
    fn an_extended_acl_sets_the_group_bits_from_its_mask_and_is_stored() {
        let value = acl(&[
            (USER_OBJ, 7, U),
            (USER, 6, 1000),
            (GROUP_OBJ, 4, U),
            (MASK, 6, U),
            (OTHER, 1, U),
        ]);
        let (mode, stored) = set_access(0o102700, &value).unwrap();
        assert_eq!(mode, 0o102761, "setgid kept, group bits = mask");
        assert_eq!(stored, Some(value.clone()));
        // chmod 0750: owner 7, mask 5, other 0; the named user keeps 6.
        let after = chmod(&value, 0o750).unwrap();
        assert_eq!(
            after,
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 6, 1000),
                (GROUP_OBJ, 4, U),
                (MASK, 5, U),
                (OTHER, 0, U),
            ])
        );
        assert_eq!(set_access(0o100000, &after).unwrap().0, 0o100750);
    }

    #[test]
    fn malformed_acls_are_refused() {
        let ok = [(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 5, U)];
        assert!(check(&acl(&ok)).is_ok());
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![2, 0, 0],
            acl(&ok)[..10].to_vec(),
            {
                let mut v = acl(&ok);
                v[0] = 1; // version 1
                v
            },
            acl(&[(GROUP_OBJ, 5, U), (USER_OBJ, 7, U), (OTHER, 5, U)]), // order
            acl(&[(USER_OBJ, 7, U), (OTHER, 5, U)]),                    // no group
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 7, 5),
                (GROUP_OBJ, 5, U),
                (OTHER, 5, U),
            ]), // no mask
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 7, 5),
                (USER, 6, 5), // repeated id
                (GROUP_OBJ, 5, U),
                (MASK, 7, U),
                (OTHER, 5, U),
            ]),
            acl(&[(USER_OBJ, 0o17, U), (GROUP_OBJ, 5, U), (OTHER, 5, U)]), // perm bits
            acl(&[
                (USER_OBJ, 7, U),
                (GROUP_OBJ, 5, U),
                (0x40, 1, U),
                (OTHER, 5, U),
            ]), // tag
        ];
        for (i, value) in bad.iter().enumerate() {
            assert_eq!(check(value), Err(Errno::EINVAL), "case {i}");
            assert_eq!(set_access(0o644, value), Err(Errno::EINVAL), "case {i}");
            assert_eq!(chmod(value, 0o644), None, "case {i}");
        }
    }
}
