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
//! A node made in a directory with a default ACL inherits it
//! ([`inherit`]), as `posix_acl_create` does: the caller's umask is then
//! not applied. The FUSE frontend asks for `FUSE_DONT_MASK`, so that it
//! sees the mode before the umask and applies one or the other; the
//! Linux 9P client does the inheritance itself and sends the result.

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

/// What a node made with mode `mode` (the caller's, before any umask) in
/// a directory whose default ACL is `default` gets.
#[derive(Debug, PartialEq, Eq)]
pub struct Inherited {
    /// The mode to create the node with. When there is an access ACL, its
    /// group bits are the owning group's entry within the mask (no more
    /// than that group may do): setting [`Inherited::access`] afterwards
    /// raises them to the mask, so a node left without its ACL (a crash
    /// between the two) grants less, never more.
    pub mode: u32,
    /// The node's access ACL, unless it says no more than the mode.
    pub access: Option<Vec<u8>>,
    /// The node's default ACL: the directory's, for a directory.
    pub default: Option<Vec<u8>>,
}

/// The inheritance of default ACL `default` by a node made with mode
/// `mode`, as the kernel's `posix_acl_create_masq`: the owner and other
/// entries keep only what the mode allows and the mode only what they
/// allow; the mask (or, without one, the owning group's entry) likewise
/// with the mode's group bits. EIO when `default` does not decode (it
/// was checked when it was set).
pub fn inherit(default: &[u8], mode: u32, is_dir: bool) -> Result<Inherited, Errno> {
    let mut entries = parse(default).map_err(|_| Errno::EIO)?;
    let mut mode = mode & 0o7777;
    let mut extended = false;
    for e in &mut entries {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((mode >> 6) & 0o7) as u16;
                mode &= u32::from(e.perm) << 6 | !0o700;
            }
            OTHER => {
                e.perm &= (mode & 0o7) as u16;
                mode &= u32::from(e.perm) | !0o007;
            }
            USER | GROUP | MASK => extended = true,
            _ => {}
        }
    }
    let class = if entries.iter().any(|e| e.tag == MASK) {
        MASK
    } else {
        GROUP_OBJ
    };
    let mut group_class = 0;
    for e in entries.iter_mut().filter(|e| e.tag == class) {
        e.perm &= ((mode >> 3) & 0o7) as u16;
        group_class = u32::from(e.perm);
    }
    mode = mode & !0o070 | group_class << 3;
    if extended {
        // Created with the owning group's own bits within the mask.
        let owning = entries
            .iter()
            .find(|e| e.tag == GROUP_OBJ)
            .map_or(0, |e| u32::from(e.perm));
        mode = mode & !0o070 | (owning & group_class) << 3;
    }
    Ok(Inherited {
        mode,
        access: extended.then(|| encode(&entries)),
        default: is_dir.then(|| default.to_vec()),
    })
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

    #[test]
    fn a_default_acl_is_inherited_within_the_mode_asked_for() {
        let default = acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 65534),
            (GROUP_OBJ, 5, U),
            (MASK, 5, U),
            (OTHER, 5, U),
        ]);
        // A file (0666): owner rw, mask and other r; created with the
        // owning group's bits within the mask, raised to the mask once
        // the access ACL is set.
        let file = inherit(&default, 0o666, false).unwrap();
        let access = acl(&[
            (USER_OBJ, 6, U),
            (USER, 5, 65534),
            (GROUP_OBJ, 5, U),
            (MASK, 4, U),
            (OTHER, 4, U),
        ]);
        assert_eq!(file.mode, 0o644);
        assert_eq!(file.access.as_deref(), Some(&access[..]));
        assert_eq!(file.default, None);
        assert_eq!(set_access(file.mode, &access), Ok((0o644, Some(access))));
        // A directory keeps the default ACL as its own.
        let dir = inherit(&default, 0o2777, true).unwrap();
        assert_eq!(dir.mode, 0o2755);
        assert_eq!(dir.access.as_deref(), Some(&default[..]));
        assert_eq!(dir.default.as_deref(), Some(&default[..]));
        // Where the owning group may do less than the mask, a node left
        // without its access ACL grants that group no more than it may.
        let narrow = acl(&[
            (USER_OBJ, 7, U),
            (USER, 7, 65534),
            (GROUP_OBJ, 0, U),
            (MASK, 7, U),
            (OTHER, 0, U),
        ]);
        let file = inherit(&narrow, 0o666, false).unwrap();
        assert_eq!(file.mode, 0o600);
        let access = file.access.unwrap();
        assert_eq!(set_access(file.mode, &access).unwrap().0, 0o660);
        // A default ACL of the three base entries is a mode, not an ACL.
        let minimal = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)]);
        let file = inherit(&minimal, 0o666, false).unwrap();
        assert_eq!((file.mode, file.access), (0o640, None));
        assert_eq!(inherit(b"junk", 0o666, false), Err(Errno::EIO));
    }
}
