//! The client half of the handshake: memory shaped like a guest's,
//! registered with userfaultfd and handed to a page server the way
//! Firecracker does it. Tests and benchmarks use it to play Firecracker's
//! role; a tool that restores a process's memory lazily can too.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};

use crate::error::{io, Error, Result};
use crate::handshake::{HandshakeVersion, RegionMapping};
use crate::image::PAGE_SIZE;
use crate::sockets;

/// One mapped region: where it is and which bytes of the image it holds.
#[derive(Clone, Copy, Debug)]
struct Mapped {
    addr: usize,
    size: usize,
    offset: u64,
}

/// Guest-shaped anonymous memory served lazily by a page server.
pub struct GuestMemory {
    regions: Vec<Mapped>,
    /// The whole reservation (regions and the holes between them).
    reservation: (usize, usize),
    uffd: Uffd,
    stream: UnixStream,
}

// SAFETY: the mapping is owned by this value and only touched through
// raw-pointer copies; the kernel serialises faults on it.
unsafe impl Send for GuestMemory {}
// SAFETY: as above: shared references only read or write bytes through
// raw pointers, which the memory model allows across threads for a
// mapping that outlives them (callers must not race writes with reads of
// the same bytes, as with any shared memory).
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps regions of `sizes` bytes (image offsets contiguous from 0) with
    /// a `hole`-byte unmapped gap after each but the last, registers them
    /// with a userfaultfd (missing faults and remove events), connects to
    /// `socket` and sends the handshake in `version`'s shape.
    pub fn connect(
        socket: &Path,
        sizes: &[usize],
        hole: usize,
        version: HandshakeVersion,
    ) -> Result<GuestMemory> {
        if sizes.is_empty()
            || sizes.iter().any(|s| *s == 0 || s % PAGE_SIZE != 0)
            || hole % PAGE_SIZE != 0
        {
            return Err(Error::Invalid(
                "regions must be whole, non-empty pages".into(),
            ));
        }
        let stream = UnixStream::connect(socket)
            .map_err(io(format!("connecting to {}", socket.display())))?;
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(true)
            .require_features(FeatureFlags::EVENT_REMOVE)
            .create()
            .map_err(|e| Error::Serve(format!("creating a userfaultfd: {e}")))?;
        let total: usize = sizes.iter().sum::<usize>() + hole * (sizes.len() - 1);
        // SAFETY: a fresh anonymous private mapping at an address the
        // kernel picks; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io("mapping guest memory")(std::io::Error::last_os_error()));
        }
        let base = base as usize;
        let mut regions = Vec::new();
        let (mut addr, mut offset) = (base, 0u64);
        for (i, &size) in sizes.iter().enumerate() {
            regions.push(Mapped { addr, size, offset });
            addr += size;
            offset += size as u64;
            if i + 1 < sizes.len() && hole > 0 {
                // SAFETY: the hole lies inside the reservation made above.
                unsafe { libc::munmap(addr as *mut libc::c_void, hole) };
                addr += hole;
            }
        }
        let guest = GuestMemory {
            regions,
            reservation: (base, total),
            uffd,
            stream,
        };
        for r in &guest.regions {
            guest
                .uffd
                .register(r.addr as *mut libc::c_void, r.size)
                .map_err(|e| Error::Serve(format!("registering guest memory: {e}")))?;
        }
        let mappings: Vec<RegionMapping> = guest
            .regions
            .iter()
            .map(|r| {
                RegionMapping::shaped(
                    r.addr as u64,
                    r.size as u64,
                    r.offset,
                    PAGE_SIZE as u64,
                    version,
                )
            })
            .collect();
        let json = serde_json::to_vec(&mappings).map_err(|e| Error::Invalid(e.to_string()))?;
        sockets::send_with_fd(&guest.stream, &json, guest.uffd.as_raw_fd())
            .map_err(io("sending the handshake"))?;
        Ok(guest)
    }

    /// Regions mapped.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Bytes of region `region`.
    pub fn region_size(&self, region: usize) -> usize {
        self.regions[region].size
    }

    /// Where region `region`'s bytes start in the image.
    pub fn region_offset(&self, region: usize) -> u64 {
        self.regions[region].offset
    }

    /// Copies `buf.len()` bytes at `offset` of region `region` (touching
    /// them: absent pages fault and wait for the server).
    pub fn read(&self, region: usize, offset: usize, buf: &mut [u8]) {
        let r = self.regions[region];
        assert!(offset + buf.len() <= r.size, "read past the region");
        // SAFETY: the source lies inside a live mapping this value owns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (r.addr + offset) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
    }

    /// Writes one byte at `offset` of region `region`.
    pub fn write_byte(&self, region: usize, offset: usize, value: u8) {
        let r = self.regions[region];
        assert!(offset < r.size, "write past the region");
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile((r.addr + offset) as *mut u8, value) };
    }

    /// Drops `len` bytes at `offset` of region `region` with
    /// `MADV_DONTNEED`, as a balloon does (the server gets a remove event).
    pub fn discard(&self, region: usize, offset: usize, len: usize) -> Result<()> {
        let r = self.regions[region];
        assert!(offset + len <= r.size && offset % PAGE_SIZE == 0 && len % PAGE_SIZE == 0);
        // SAFETY: the range lies inside a live mapping this value owns.
        let rc = unsafe {
            libc::madvise(
                (r.addr + offset) as *mut libc::c_void,
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(io("madvise(MADV_DONTNEED)")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The socket to the server (readable: a line from it, or its end).
    pub fn socket(&self) -> &UnixStream {
        &self.stream
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            let _ = self.uffd.unregister(r.addr as *mut libc::c_void, r.size);
        }
        // SAFETY: the reservation was mapped by `connect` and nothing
        // refers into it once this value is dropped.
        unsafe { libc::munmap(self.reservation.0 as *mut libc::c_void, self.reservation.1) };
    }
}
