//! Firecracker's userfaultfd handshake: the VMM connects to the page
//! server's Unix stream socket and sends, in one message, a JSON array of
//! its guest memory regions with the userfaultfd attached (`SCM_RIGHTS`),
//! then keeps the socket open for the life of the VM.
//!
//! The region fields changed across Firecracker versions, and all three
//! shapes are accepted: 1.1–1.6 send `{base_host_virt_addr, size,
//! offset}` (4 KiB pages); 1.7–1.11 add `page_size_kib`, whose value is
//! in bytes despite its name; 1.12+ send `page_size` and still
//! `page_size_kib` (both in bytes).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{MAX_CLIENT_PAGE_SIZE, PAGE_SIZE};

/// Most regions one client may map.
pub const MAX_REGIONS: usize = 1024;
/// Most bytes of handshake JSON.
pub const MAX_HANDSHAKE_BYTES: usize = 1 << 20;

/// One guest memory region as the VMM describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionMapping {
    /// Where the region starts in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Bytes of the region.
    pub size: u64,
    /// Where the region's bytes start in the memory image.
    pub offset: u64,
    /// Page size in bytes (Firecracker 1.12+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// Page size, also in bytes (Firecracker 1.7+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size_kib: Option<u64>,
}

/// Which Firecracker version's message shape to send (the client half,
/// for tests and tools that restore memory without Firecracker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeVersion {
    /// 1.1–1.6: no page size.
    V1_1,
    /// 1.7–1.11: `page_size_kib` (in bytes).
    V1_7,
    /// 1.12+: `page_size` and `page_size_kib`.
    V1_12,
}

/// A region checked and ready to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub offset: u64,
    pub page_size: u64,
}

impl Region {
    /// Whether address `addr` is inside the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

impl RegionMapping {
    /// This region as `version` sends it.
    pub fn shaped(
        base: u64,
        size: u64,
        offset: u64,
        page_size: u64,
        version: HandshakeVersion,
    ) -> RegionMapping {
        let (page_size, page_size_kib) = match version {
            HandshakeVersion::V1_1 => (None, None),
            HandshakeVersion::V1_7 => (None, Some(page_size)),
            HandshakeVersion::V1_12 => (Some(page_size), Some(page_size)),
        };
        RegionMapping {
            base_host_virt_addr: base,
            size,
            offset,
            page_size,
            page_size_kib,
        }
    }
}

/// Parses and checks a handshake against an image of `image_size` bytes:
/// `None` while `bytes` is not yet a whole JSON value.
pub fn parse(bytes: &[u8], image_size: u64) -> Result<Option<Vec<Region>>> {
    let mappings: Vec<RegionMapping> = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) if e.is_eof() => return Ok(None),
        Err(e) => {
            return Err(Error::Serve(format!(
                "the handshake is not a JSON array of regions: {e}"
            )))
        }
    };
    let bad = |i: usize, why: String| Err(Error::Serve(format!("region {i}: {why}")));
    if mappings.is_empty() || mappings.len() > MAX_REGIONS {
        return Err(Error::Serve(format!(
            "{} regions (1 to {MAX_REGIONS} are served)",
            mappings.len()
        )));
    }
    let image_end = image_size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
    let mut regions = Vec::with_capacity(mappings.len());
    for (i, m) in mappings.iter().enumerate() {
        let page_size = m.page_size.or(m.page_size_kib).unwrap_or(PAGE_SIZE as u64);
        if page_size < PAGE_SIZE as u64
            || page_size > MAX_CLIENT_PAGE_SIZE as u64
            || !page_size.is_power_of_two()
        {
            return bad(
                i,
                format!("page size {page_size} is not a power of two from 4 KiB to 1 GiB"),
            );
        }
        if let (Some(a), Some(b)) = (m.page_size, m.page_size_kib) {
            if a != b {
                return bad(i, format!("page_size {a} and page_size_kib {b} disagree"));
            }
        }
        if m.size == 0
            || m.size % page_size != 0
            || m.base_host_virt_addr % page_size != 0
            || m.offset % PAGE_SIZE as u64 != 0
        {
            return bad(
                i,
                format!(
                    "base {:#x}, size {} and offset {} must be whole pages of {page_size} bytes",
                    m.base_host_virt_addr, m.size, m.offset
                ),
            );
        }
        let Some(end) = m.offset.checked_add(m.size) else {
            return bad(i, "offset + size overflows".into());
        };
        if end > image_end.div_ceil(page_size) * page_size {
            return bad(
                i,
                format!(
                    "bytes {}..{end} of an image of {image_size} bytes",
                    m.offset
                ),
            );
        }
        if m.base_host_virt_addr.checked_add(m.size).is_none() {
            return bad(i, "base + size overflows".into());
        }
        regions.push(Region {
            base: m.base_host_virt_addr,
            size: m.size,
            offset: m.offset,
            page_size,
        });
    }
    let mut sorted = regions.clone();
    sorted.sort_by_key(|r| r.base);
    for pair in sorted.windows(2) {
        if pair[0].base + pair[0].size > pair[1].base {
            return Err(Error::Serve(format!(
                "regions at {:#x} and {:#x} overlap",
                pair[0].base, pair[1].base
            )));
        }
    }
    Ok(Some(regions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(version: HandshakeVersion) -> Vec<u8> {
        let regions = [
            RegionMapping::shaped(0x10000, 8192, 0, 4096, version),
            RegionMapping::shaped(0x40000, 4096, 8192, 4096, version),
        ];
        serde_json::to_vec(&regions).unwrap()
    }

    #[test]
    fn every_firecracker_shape_parses_to_the_same_regions() {
        let want = parse(&encode(HandshakeVersion::V1_12), 12288)
            .unwrap()
            .unwrap();
        for version in [HandshakeVersion::V1_1, HandshakeVersion::V1_7] {
            assert_eq!(parse(&encode(version), 12288).unwrap().unwrap(), want);
        }
        assert_eq!(
            want[1],
            Region {
                base: 0x40000,
                size: 4096,
                offset: 8192,
                page_size: 4096
            }
        );
        // Firecracker 1.7's field name, as sent: bytes, not KiB.
        let old = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]"#;
        assert_eq!(parse(old, 4096).unwrap().unwrap()[0].page_size, 4096);
    }

    #[test]
    fn a_partial_message_waits_and_bad_regions_are_refused() {
        let whole = encode(HandshakeVersion::V1_12);
        assert!(parse(&whole[..whole.len() - 3], 12288).unwrap().is_none());
        for bad in [
            r#"{"not":"an array"}"#,
            r#"[]"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":8192}]"#,
            r#"[{"base_host_virt_addr":4097,"size":4096,"offset":0}]"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0},{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#,
            r#"[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}]"#,
        ] {
            assert!(parse(bad.as_bytes(), 8192).is_err(), "accepted {bad}");
        }
    }
}
