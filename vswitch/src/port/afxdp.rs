//! AF_XDP uplink port: one socket on one receive queue of an existing
//! interface, fed by the steering program in [`crate::ebpf::UplinkProgram`]
//! (register the socket with `register_xsk(queue, port.raw_fd())`).
//!
//! Memory: a UMEM of [`FRAME_COUNT`] chunks of [`FRAME_SIZE`] bytes, mapped
//! once. The first 4096 feed the fill ring (receive), the other 2048 are the
//! transmit pool. Receiving copies each frame into the caller's [`Packet`] and
//! hands the chunk straight back to the fill ring; sending copies into a free
//! transmit chunk. Nothing is allocated per packet.
//!
//! Limits:
//! - A frame must fit one chunk: at most [`MAX_FRAME_LEN`] (4096) bytes with
//!   its Ethernet header, so the uplink MTU must stay at or below 4078 (4074
//!   with a VLAN tag). Drivers running native XDP usually cap the MTU lower
//!   (about 3.5 KB for veth). Longer received frames are dropped by the
//!   kernel; longer sends are refused.
//! - No offloads: GSO super-frames are refused with `InvalidInput` (the
//!   datapath counts them; TAPs must segment first), and a frame marked
//!   `F_NEEDS_CSUM` gets its checksum computed in software on the way out.
//! - Received frames are what XDP saw. A sender on the same host (a veth
//!   peer) with TX checksum offload, the default, leaves a partial TCP or
//!   UDP checksum in them (the field holds the pseudo-header sum, the rest
//!   is left to a device that never comes), and XDP has no way to say so.
//!   On a veth, where nothing corrupts a frame between the two ends, a
//!   frame whose L4 checksum field equals its folded pseudo-header sum is
//!   taken for one and handed on as `F_NEEDS_CSUM` with `csum_start` and
//!   `csum_offset`, as the kernel itself hands such a frame to the peer's
//!   stack (`CHECKSUM_PARTIAL`); whoever sends it on completes it or passes
//!   the flag on. Frames from a physical wire are complete, and a frame that
//!   merely looks partial is still right to complete: filling in a checksum
//!   whose field held the pseudo-header sum gives the same field back. The
//!   IPv4 header checksum is never offloaded. VLAN tags a veth peer carries
//!   out of band are put back into the frame by the XDP program (see
//!   [`crate::ebpf::UplinkProgram`]).
//! - Zero-copy is tried first and copy mode used when the driver refuses it
//!   (veth and most virtual devices only do copy mode).
//!
//! The socket is bound in the calling thread's network namespace.

use crate::ifname::{IfName, InvalidIfName};
use crate::sys::error_chain;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Packet, PortIo, VirtioNetHdr};
use crate::wire::{pseudo_header_v4, pseudo_header_v6, IpProtocol};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Bytes per UMEM chunk.
pub const FRAME_SIZE: u32 = 4096;
/// Chunks in the UMEM (24 MiB).
pub const FRAME_COUNT: u32 = RX_FRAMES + TX_FRAMES;
/// Longest frame the port can carry, Ethernet header included.
pub const MAX_FRAME_LEN: usize = FRAME_SIZE as usize;

/// Chunks given to the kernel for receiving; the rest are for sending.
/// Receiving gets the larger share: a TCP sender on the same host bursts
/// faster than the switch's thread drains (a wire-sized frame costs the
/// kernel far less than it costs the switch), and whatever finds the fill
/// ring empty is lost (`rx_fill_ring_empty_descs`). With 2048 the fill ring
/// ran dry thousands of times per second at 2 Gbit/s outside -> endpoint.
const RX_FRAMES: u32 = 4096;
const TX_FRAMES: u32 = 2048;
/// Every ring holds as many entries as the chunks that can be in it, so a
/// producer never finds its ring full while it owns a chunk.
const RING_SIZE: u32 = 4096;
const _: () = assert!(RING_SIZE.is_power_of_two() && RING_SIZE >= RX_FRAMES);
const _: () = assert!(RING_SIZE >= TX_FRAMES);

/// Setting up the socket failed; names the step.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error(transparent)]
    InvalidInterfaceName(#[from] InvalidIfName),
    #[error("interface {0} does not exist in this network namespace")]
    NoSuchInterface(String),
    #[error("{call} failed")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("binding to {ifname} queue {queue} (zero-copy: {zero_copy}; copy mode failed)")]
    Bind {
        ifname: String,
        queue: u32,
        zero_copy: String,
        #[source]
        source: io::Error,
    },
}

fn last_error(call: &'static str) -> XskError {
    XskError::Syscall {
        call,
        source: io::Error::last_os_error(),
    }
}

/// An anonymous or socket mapping, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize, fd: RawFd, offset: i64, call: &'static str) -> Result<Mmap, XskError> {
        let (flags, fd) = if fd < 0 {
            (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            )
        } else {
            (libc::MAP_SHARED | libc::MAP_POPULATE, fd)
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing;
        // nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_error(call));
        }
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and still own; no
        // reference into it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One of the four shared rings. The kernel owns one index, we own the
/// other; each side reads the other's with acquire and publishes its own
/// with release, so descriptors are visible before the index that covers
/// them.
struct Ring<T> {
    _map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    /// Our copy of our own index and our last view of the kernel's.
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, pgoff: u64) -> Result<Ring<T>, XskError> {
        let len = off.desc as usize + RING_SIZE as usize * std::mem::size_of::<T>();
        let map = Mmap::new(len, fd, pgoff as i64, "mmap(ring)")?;
        let base = map.ptr.as_ptr();
        // SAFETY: the kernel places the indexes, flags and descriptors at
        // these offsets inside the mapping it sized for RING_SIZE entries,
        // suitably aligned.
        let (producer, consumer, flags, descs) = unsafe {
            (
                NonNull::new_unchecked(base.add(off.producer as usize).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(off.consumer as usize).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(off.flags as usize).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(off.desc as usize).cast::<T>()),
            )
        };
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            cached_prod: 0,
            cached_cons: 0,
        };
        ring.cached_prod = ring.producer().load(Ordering::Acquire);
        ring.cached_cons = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for producer.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for producer.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: the masked index is below RING_SIZE, inside the mapping.
        unsafe { self.descs.as_ptr().add((index & (RING_SIZE - 1)) as usize) }
    }

    // --- producer side (fill, tx) ---

    /// Free entries, up to `want`.
    fn free(&mut self, want: u32) -> u32 {
        let mut free = RING_SIZE - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            free = RING_SIZE - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free.min(want)
    }

    /// Writes the next entry; only after `free` said there is room.
    fn push(&mut self, value: T) {
        // SAFETY: the slot is free (checked by the caller through `free`),
        // so the kernel does not read it until we publish.
        unsafe { self.slot(self.cached_prod).write(value) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&self) {
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Entries published but not yet taken by the kernel.
    fn outstanding(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.consumer().load(Ordering::Acquire))
    }

    // --- consumer side (rx, completion) ---

    /// Entries ready to read, up to `want`.
    fn available(&mut self, want: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready < want {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(want)
    }

    /// The `i`th ready entry; `i` below what `available` returned.
    fn peek(&self, i: u32) -> T {
        // SAFETY: the kernel published this entry (acquire in `available`)
        // and does not touch it until we release it.
        unsafe { self.slot(self.cached_cons.wrapping_add(i)).read() }
    }

    /// Hands `n` read entries back to the kernel.
    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}

/// An AF_XDP socket on one queue of an interface, as a switch port.
pub struct XskPort {
    // Field order is drop order: the socket closes before its rings and
    // UMEM are unmapped.
    fd: OwnedFd,
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Mmap,
    /// Transmit chunks we own (not in the tx ring, the kernel or the
    /// completion ring). Capacity TX_FRAMES, never grows.
    tx_free: Vec<u64>,
    /// Descriptors pushed to the tx ring since the last publish.
    tx_pushed: u32,
    zero_copy: bool,
    /// The device may hand over frames with partial L4 checksums (a veth:
    /// its peer's TX checksum offload), to be flagged `F_NEEDS_CSUM`.
    partial_csums: bool,
    ifname: String,
    queue: u32,
}

// SAFETY: the raw pointers only point into mappings owned by this value;
// nothing else in the process refers to them, so moving the port to another
// thread moves exclusive access with it.
unsafe impl Send for XskPort {}

impl XskPort {
    /// Creates a socket bound to receive queue `queue` of `ifname` (in the
    /// calling thread's network namespace), zero-copy if the driver supports
    /// it, copy mode otherwise.
    pub fn open(ifname: &str, queue: u32) -> Result<XskPort, XskError> {
        let ifindex = ifindex(ifname)?;
        let zero_copy_error = match XskPort::open_with(ifname, ifindex, queue, libc::XDP_ZEROCOPY) {
            Ok(port) => return Ok(port),
            Err(e) => e,
        };
        let port = match XskPort::open_with(ifname, ifindex, queue, libc::XDP_COPY) {
            Ok(port) => port,
            Err(XskError::Syscall {
                call: "bind",
                source,
            }) => {
                return Err(XskError::Bind {
                    ifname: ifname.to_string(),
                    queue,
                    zero_copy: error_chain(&zero_copy_error),
                    source,
                })
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(ifname, queue, reason = %error_chain(&zero_copy_error), "AF_XDP in copy mode");
        Ok(port)
    }

    fn open_with(ifname: &str, ifindex: u32, queue: u32, mode: u16) -> Result<XskPort, XskError> {
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error("socket(AF_XDP)"));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_raw_fd();

        let umem_len = FRAME_COUNT as usize * FRAME_SIZE as usize;
        let umem = Mmap::new(umem_len, -1, 0, "mmap(umem)")?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(sock, libc::XDP_UMEM_REG, &reg, "setsockopt(XDP_UMEM_REG)")?;
        let size = RING_SIZE;
        setsockopt(
            sock,
            libc::XDP_UMEM_FILL_RING,
            &size,
            "setsockopt(XDP_UMEM_FILL_RING)",
        )?;
        setsockopt(
            sock,
            libc::XDP_UMEM_COMPLETION_RING,
            &size,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        )?;
        setsockopt(sock, libc::XDP_RX_RING, &size, "setsockopt(XDP_RX_RING)")?;
        setsockopt(sock, libc::XDP_TX_RING, &size, "setsockopt(XDP_TX_RING)")?;

        // SAFETY: xdp_mmap_offsets is plain data; all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: off and optlen are valid for writing the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                sock,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(last_error("getsockopt(XDP_MMAP_OFFSETS)"));
        }

        let fill = Ring::<u64>::map(sock, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::<u64>::map(sock, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING)?;
        let rx = Ring::<libc::xdp_desc>::map(sock, &off.rx, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::<libc::xdp_desc>::map(sock, &off.tx, libc::XDP_PGOFF_TX_RING as u64)?;

        let mut tx_free = Vec::with_capacity(TX_FRAMES as usize);
        tx_free.extend((RX_FRAMES..FRAME_COUNT).map(|i| u64::from(i) * u64::from(FRAME_SIZE)));

        let mut port = XskPort {
            fd,
            fill,
            completion,
            rx,
            tx,
            umem,
            tx_free,
            tx_pushed: 0,
            zero_copy: mode == libc::XDP_ZEROCOPY,
            partial_csums: mode == libc::XDP_COPY && has_partial_checksums(ifname),
            ifname: ifname.to_string(),
            queue,
        };

        // Give the kernel every receive chunk before frames can arrive.
        let room = port.fill.free(RX_FRAMES);
        debug_assert_eq!(room, RX_FRAMES);
        for i in 0..room {
            port.fill.push(u64::from(i) * u64::from(FRAME_SIZE));
        }
        port.fill.publish();

        // SAFETY: sockaddr_xdp is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
        addr.sxdp_family = libc::AF_XDP as u16;
        addr.sxdp_flags = mode | libc::XDP_USE_NEED_WAKEUP;
        addr.sxdp_ifindex = ifindex;
        addr.sxdp_queue_id = queue;
        // SAFETY: addr is a valid sockaddr_xdp of the size passed.
        let rc = unsafe {
            libc::bind(
                sock,
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_error("bind"));
        }
        Ok(port)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// True when bound in zero-copy mode (the driver owns the UMEM).
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// True when received frames are checked for partial checksums (see
    /// the module docs): a veth in copy mode.
    pub fn flags_partial_checksums(&self) -> bool {
        self.partial_csums
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`): frames
    /// the socket lost because its rx ring was full (`rx_ring_full`) or the
    /// fill ring had no chunk (`rx_fill_ring_empty_descs`), among others.
    pub fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: xdp_statistics is plain data; all-zero is valid.
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: stats and optlen are valid for writing the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut stats as *mut libc::xdp_statistics).cast(),
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats)
    }

    /// The UMEM chunk at `addr`, `len` bytes long.
    fn chunk(&self, addr: u64, len: usize) -> &[u8] {
        let addr = addr as usize;
        assert!(addr + len <= self.umem.len, "descriptor outside the UMEM");
        // SAFETY: in bounds (asserted); the kernel handed this chunk to us
        // (rx ring) and does not write it until we return it.
        unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(addr), len) }
    }

    fn chunk_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let addr = addr as usize;
        assert!(addr + len <= self.umem.len, "chunk outside the UMEM");
        // SAFETY: in bounds (asserted); the chunk is in tx_free, so neither
        // the kernel nor another slice refers to it.
        unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(addr), len) }
    }

    /// Moves finished transmit chunks back to the free pool.
    fn reap_completions(&mut self) {
        let n = self.completion.available(TX_FRAMES);
        for i in 0..n {
            let addr = self.completion.peek(i);
            debug_assert!(self.tx_free.len() < self.tx_free.capacity());
            self.tx_free.push(addr);
        }
        if n > 0 {
            self.completion.release(n);
        }
    }

    /// Asks the kernel to transmit what the tx ring holds. Copy mode sends a
    /// bounded batch per call and answers EAGAIN while more is left.
    fn kick_tx(&mut self) -> io::Result<()> {
        for _ in 0..(TX_FRAMES / 32 + 1) {
            if self.tx.outstanding() == 0 {
                return Ok(());
            }
            if !self.tx.needs_wakeup() {
                return Ok(());
            }
            // SAFETY: a zero-length send with no buffer or address only
            // wakes the socket's transmit path.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // Budget used up or the device queue is busy: try again
                // (bounded), then leave the rest for the next flush.
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => continue,
                _ => return Err(err),
            }
        }
        Ok(())
    }
}

impl Drop for XskPort {
    fn drop(&mut self) {
        if let Ok(st) = self.statistics() {
            tracing::debug!(
                ifname = %self.ifname,
                queue = self.queue,
                rx_dropped = st.rx_dropped,
                rx_ring_full = st.rx_ring_full,
                rx_fill_ring_empty = st.rx_fill_ring_empty_descs,
                rx_invalid = st.rx_invalid_descs,
                tx_invalid = st.tx_invalid_descs,
                tx_ring_empty = st.tx_ring_empty_descs,
                "AF_XDP socket statistics"
            );
        }
    }
}

impl PortIo for XskPort {
    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv_batch(&mut self, batch: &mut [Packet]) -> io::Result<usize> {
        let want = batch.len().min(RING_SIZE as usize) as u32;
        let n = self.rx.available(want);
        if n == 0 {
            return Ok(0);
        }
        // Every receive chunk is in the fill ring, in flight or here, and the
        // fill ring holds them all, so there is room for the n coming back.
        let room = self.fill.free(n);
        debug_assert_eq!(room, n);
        for (i, pkt) in batch.iter_mut().take(n as usize).enumerate() {
            let desc = self.rx.peek(i as u32);
            let len = desc.len as usize;
            let frame = self.chunk(desc.addr, len);
            pkt.buffer_mut()[..len].copy_from_slice(frame);
            pkt.set_len(len);
            pkt.vnet = VirtioNetHdr::default();
            if self.partial_csums {
                if let Some((start, offset)) = partial_l4_checksum(pkt.frame()) {
                    pkt.vnet.flags = VirtioNetHdr::F_NEEDS_CSUM;
                    pkt.vnet.csum_start = start;
                    pkt.vnet.csum_offset = offset;
                }
            }
            if (i as u32) < room {
                // Aligned mode: the chunk's base, whatever offset the
                // kernel used inside it.
                self.fill.push(desc.addr & !(u64::from(FRAME_SIZE) - 1));
            }
        }
        self.rx.release(n);
        self.fill.publish();
        if self.fill.needs_wakeup() {
            // SAFETY: a zero-length, non-blocking receive with no buffer only
            // wakes the driver to refill from the fill ring.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        Ok(n as usize)
    }

    fn send(&mut self, pkt: &Packet) -> io::Result<()> {
        let frame = pkt.frame();
        if pkt.vnet.is_gso() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "AF_XDP cannot send a GSO frame",
            ));
        }
        if frame.len() > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame longer than an AF_XDP chunk",
            ));
        }
        if self.tx_free.is_empty() {
            self.reap_completions();
        }
        let Some(addr) = self.tx_free.pop() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // We own a chunk, so the tx ring (as large as the pool) has room;
        // checked anyway rather than trusted.
        if self.tx.free(1) == 0 {
            self.tx_free.push(addr);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let needs_csum = pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0;
        let (csum_start, csum_offset) = (pkt.vnet.csum_start, pkt.vnet.csum_offset);
        let chunk = self.chunk_mut(addr, frame.len());
        chunk.copy_from_slice(frame);
        if needs_csum {
            if let Err(e) = fill_checksum(chunk, csum_start.into(), csum_offset.into()) {
                self.tx_free.push(addr);
                return Err(e);
            }
        }
        self.tx.push(libc::xdp_desc {
            addr,
            len: frame.len() as u32,
            options: 0,
        });
        self.tx_pushed += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx_pushed > 0 {
            self.tx.publish();
            self.tx_pushed = 0;
        }
        let result = self.kick_tx();
        self.reap_completions();
        result
    }
}

/// Completes a partial checksum the way the kernel's `skb_checksum_help`
/// does: the field at `start + offset` holds the pseudo-header sum; the
/// ones'-complement sum from `start` to the end, folded and inverted,
/// replaces it (0 is sent as 0xffff, which UDP requires and TCP accepts).
fn fill_checksum(frame: &mut [u8], start: usize, offset: usize) -> io::Result<()> {
    let field = start + offset;
    if field + 2 > frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "checksum offset beyond the frame",
        ));
    }
    let mut sum = ones_complement_sum(&frame[start..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Where a frame's TCP or UDP checksum is still to be computed: `Some
/// ((csum_start, csum_offset))` when the field holds exactly the folded
/// pseudo-header sum, which is what a sender offloading the checksum leaves
/// there (Linux `~csum_*_magic(.., 0)`). IPv4 (not fragmented) or IPv6 with
/// TCP or UDP as the first next header, behind at most one VLAN tag; anything
/// else is `None`. Reads only the headers.
pub(crate) fn partial_l4_checksum(frame: &[u8]) -> Option<(u16, u16)> {
    const ETH: usize = 14;
    let be16 = |at: usize| -> Option<u16> {
        let b = frame.get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    // TCP or UDP: the protocol and where its checksum field sits.
    let l4_proto = |number: u8| match number {
        6 => Some((IpProtocol::Tcp, 16u16)),
        17 => Some((IpProtocol::Udp, 6u16)),
        _ => None,
    };
    let mut l3 = ETH;
    let mut ethertype = be16(12)?;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(16)?;
        l3 += 4;
    }
    let (l4, offset, pseudo) = match ethertype {
        0x0800 => {
            let first = *frame.get(l3)?;
            let ihl = usize::from(first & 0x0f) * 4;
            // Fragments never carry a partial checksum.
            if first >> 4 != 4 || ihl < 20 || be16(l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            let total = usize::from(be16(l3 + 2)?);
            let (proto, offset) = l4_proto(*frame.get(l3 + 9)?)?;
            if total < ihl || l3 + total > frame.len() {
                return None;
            }
            // In bounds: the header is within `total`, checked above.
            let addr = |at: usize| <[u8; 4]>::try_from(&frame[at..at + 4]).map(Ipv4Addr::from);
            let (src, dst) = (addr(l3 + 12).ok()?, addr(l3 + 16).ok()?);
            let pseudo = pseudo_header_v4(src, dst, proto, (total - ihl) as u16);
            (l3 + ihl, offset, pseudo)
        }
        0x86dd => {
            if *frame.get(l3)? >> 4 != 6 {
                return None;
            }
            let l4_len = usize::from(be16(l3 + 4)?);
            let (proto, offset) = l4_proto(*frame.get(l3 + 6)?)?;
            if l3 + 40 + l4_len > frame.len() {
                return None;
            }
            let addr = |at: usize| <[u8; 16]>::try_from(&frame[at..at + 16]).map(Ipv6Addr::from);
            let (src, dst) = (addr(l3 + 8).ok()?, addr(l3 + 24).ok()?);
            (
                l3 + 40,
                offset,
                pseudo_header_v6(src, dst, proto, l4_len as u32),
            )
        }
        _ => return None,
    };
    let field = be16(l4 + usize::from(offset))?;
    (field == pseudo.folded()).then_some((l4 as u16, offset))
}

/// Whether `ifname` is a device whose received frames can carry partial
/// checksums: a veth, whose peer's stack offloads checksums to it by
/// default. Asked with `ETHTOOL_GDRVINFO` in the calling thread's network
/// namespace; unknown counts as no.
fn has_partial_checksums(ifname: &str) -> bool {
    matches!(driver_name(ifname).as_deref(), Some("veth"))
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// The driver behind `ifname`, as ethtool names it.
fn driver_name(ifname: &str) -> Option<String> {
    if ifname.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: both are plain data; all-zero is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: ifr names the interface and points at an ethtool_drvinfo the
    // kernel fills; both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Sum of big-endian 16-bit words (odd tail padded with zero), unfolded.
fn ones_complement_sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn ifindex(ifname: &str) -> Result<u32, XskError> {
    IfName::checked(ifname)?;
    let name = CString::new(ifname).expect("checked: no NUL");
    // SAFETY: name is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(XskError::NoSuchInterface(ifname.to_string()));
    }
    Ok(index)
}

fn setsockopt<T>(
    fd: RawFd,
    opt: libc::c_int,
    value: &T,
    call: &'static str,
) -> Result<(), XskError> {
    // SAFETY: value points to a T of the size passed, read-only.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_error(call));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4/UDP from 10.0.0.1:1234 to 10.0.0.2:5678, payload "hi!".
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // ethernet
            0x45, 0, 0, 31, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ipv4
            0x04, 0xd2, 0x16, 0x2e, 0, 11, 0, 0, // udp
        ];
        f.extend_from_slice(b"hi!");
        f
    }

    /// What a sender with checksum offload leaves in the UDP checksum field:
    /// the folded pseudo-header sum, not inverted.
    fn seed_pseudo_header(f: &mut [u8]) {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]); // src + dst
        pseudo.extend_from_slice(&[0, 17, 0, 11]);
        let mut s = ones_complement_sum(&pseudo);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        f[40..42].copy_from_slice(&(s as u16).to_be_bytes());
    }

    fn full_udp_checksum(f: &[u8]) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(&f[26..34]);
        data.extend_from_slice(&[0, 17, 0, 11]);
        data.extend_from_slice(&f[34..]);
        data[12 + 6] = 0;
        data[12 + 7] = 0;
        let mut s = ones_complement_sum(&data);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn completes_a_partial_udp_checksum() {
        let mut f = udp_frame();
        seed_pseudo_header(&mut f);
        fill_checksum(&mut f, 34, 6).unwrap();
        let got = u16::from_be_bytes([f[40], f[41]]);
        assert_eq!(got, full_udp_checksum(&f));
        // Verifying over pseudo-header + segment gives all ones.
        let mut check = Vec::new();
        check.extend_from_slice(&f[26..34]);
        check.extend_from_slice(&[0, 17, 0, 11]);
        check.extend_from_slice(&f[34..]);
        let mut s = ones_complement_sum(&check);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(s, 0xffff);
    }

    /// Sets the L4 checksum field at `at` to the folded pseudo-header sum,
    /// as a sender offloading it does.
    fn seed(f: &mut [u8], at: usize, pseudo: crate::wire::Checksum) {
        f[at..at + 2].copy_from_slice(&pseudo.folded().to_be_bytes());
    }

    #[test]
    fn recognises_partial_checksums_only_where_the_field_is_the_pseudo_header_sum() {
        // IPv4/UDP.
        let mut f = udp_frame();
        assert_eq!(partial_l4_checksum(&f), None, "zero: no checksum");
        seed_pseudo_header(&mut f);
        assert_eq!(partial_l4_checksum(&f), Some((34, 6)));
        fill_checksum(&mut f, 34, 6).unwrap();
        assert_eq!(partial_l4_checksum(&f), None, "a complete checksum");

        // Behind a VLAN tag.
        let mut tagged = udp_frame();
        seed_pseudo_header(&mut tagged);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(partial_l4_checksum(&tagged), Some((38, 6)));

        // IPv4/TCP: 20-byte header, checksum at 16.
        let mut tcp = udp_frame();
        tcp.truncate(34);
        tcp[23] = 6;
        tcp.extend_from_slice(&[0; 20]);
        tcp.extend_from_slice(b"data");
        tcp[16..18].copy_from_slice(&44u16.to_be_bytes());
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        seed(&mut tcp, 50, pseudo_header_v4(a, b, IpProtocol::Tcp, 24));
        assert_eq!(partial_l4_checksum(&tcp), Some((34, 16)));
        // A fragment never holds one.
        tcp[20] = 0x20;
        assert_eq!(partial_l4_checksum(&tcp), None);

        // IPv6/TCP.
        let (s6, d6): (Ipv6Addr, Ipv6Addr) =
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mut v6 = vec![0u8; 14 + 40 + 24];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14] = 0x60;
        v6[18..20].copy_from_slice(&24u16.to_be_bytes());
        v6[20] = 6;
        v6[21] = 64;
        v6[22..38].copy_from_slice(&s6.octets());
        v6[38..54].copy_from_slice(&d6.octets());
        seed(
            &mut v6,
            54 + 16,
            pseudo_header_v6(s6, d6, IpProtocol::Tcp, 24),
        );
        assert_eq!(partial_l4_checksum(&v6), Some((54, 16)));
        // Truncated: the IPv6 payload length runs past the frame.
        assert_eq!(partial_l4_checksum(&v6[..70]), None);
        // Another protocol (ICMPv6) is never flagged.
        v6[20] = 58;
        assert_eq!(partial_l4_checksum(&v6), None);
    }

    #[test]
    fn refuses_checksum_offset_beyond_frame() {
        let mut f = udp_frame();
        let len = f.len();
        assert_eq!(
            fill_checksum(&mut f, len - 1, 6).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn odd_length_sum_pads_with_zero() {
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}

/// Root-only tests on a veth pair in fresh namespaces: the steering program
/// and an XskPort on `a`, the far end `b` injecting and capturing with
/// AF_PACKET.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use crate::ebpf::testnet::{is_root, RawSocket, VethNet};
    use crate::ebpf::UplinkProgram;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    const ETH_EXPERIMENTAL: [u8; 2] = [0x88, 0xb5];
    const ENDPOINT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x10];

    struct Uplink {
        prog: UplinkProgram,
        port: XskPort,
        // Last: the namespaces go after the program and socket.
        net: VethNet,
    }

    fn setup() -> Option<Uplink> {
        if !is_root() {
            eprintln!("skipped: needs root (namespaces, XDP, AF_XDP)");
            return None;
        }
        let net = VethNet::new().expect("building the veth topology");
        let (prog, port) = net.in_a(|| {
            let mut prog = UplinkProgram::attach(&net.a).expect("attach");
            let port = XskPort::open(&net.a, 0).expect("open AF_XDP socket");
            prog.register_xsk(0, port.raw_fd())
                .expect("register socket");
            (prog, port)
        });
        eprintln!(
            "{}: XDP mode {}, AF_XDP zero-copy {}",
            net.a,
            prog.mode(),
            port.is_zero_copy()
        );
        Some(Uplink { prog, port, net })
    }

    fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, marker: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(vid) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ETH_EXPERIMENTAL);
        f.extend_from_slice(marker);
        f.resize(f.len().max(60), 0);
        f
    }

    fn arp_request(src_mac: [u8; 6], src_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&src_ip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f.resize(60, 0);
        f
    }

    fn ipv4_udp(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let csum = !fold(ones_complement_sum(&ip));
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0]);
        f.extend_from_slice(b"vsxt");
        f
    }

    fn neighbour_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let t = target.octets();
        let mut f = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&[
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
        ]);
        f.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&t);
        f.extend_from_slice(&[1, 1]);
        f.extend_from_slice(&src_mac);
        f
    }

    fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Polls the port until a frame satisfying `want` arrives or `timeout`.
    fn recv_matching(
        port: &mut XskPort,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let mut batch: Vec<Packet> = (0..4).map(|_| Packet::new()).collect();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let n = port.recv_batch(&mut batch).expect("recv_batch");
            if let Some(p) = batch[..n].iter().find(|p| want(p.frame())) {
                assert_eq!(p.vnet, VirtioNetHdr::default());
                return Some(p.frame().to_vec());
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        None
    }

    fn contains(frame: &[u8], marker: &[u8]) -> bool {
        frame.windows(marker.len()).any(|w| w == marker)
    }

    #[test]
    fn endpoint_mac_frames_reach_the_socket_by_vlan() {
        let Some(mut up) = setup() else { return };
        let raw = up
            .net
            .in_b(|| RawSocket::open(&up.net.b).expect("AF_PACKET in B"));
        let wait = Duration::from_secs(2);
        let short = Duration::from_millis(300);

        // Not registered yet: the host gets it.
        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, None, b"vsx-before"))
            .unwrap();
        assert!(recv_matching(&mut up.port, short, |f| contains(f, b"vsx-before")).is_none());

        up.prog.add_mac(0, ENDPOINT_MAC, false).unwrap();
        up.prog.add_mac(10, ENDPOINT_MAC, false).unwrap();
        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, None, b"vsx-untagged"))
            .unwrap();
        let got = recv_matching(&mut up.port, wait, |f| contains(f, b"vsx-untagged"));
        assert_eq!(got.unwrap()[..6], ENDPOINT_MAC);

        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, Some(10), b"vsx-vlan10"))
            .unwrap();
        let got = recv_matching(&mut up.port, wait, |f| contains(f, b"vsx-vlan10"));
        assert_eq!(got.expect("VLAN 10 frame")[12..14], [0x81, 0x00]);

        // Same MAC on a VLAN it was not registered on stays with the host.
        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, Some(11), b"vsx-vlan11"))
            .unwrap();
        assert!(recv_matching(&mut up.port, short, |f| contains(f, b"vsx-vlan11")).is_none());

        up.prog.remove_mac(0, ENDPOINT_MAC).unwrap();
        up.prog.remove_mac(0, ENDPOINT_MAC).unwrap(); // idempotent
        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, None, b"vsx-removed"))
            .unwrap();
        assert!(recv_matching(&mut up.port, short, |f| contains(f, b"vsx-removed")).is_none());

        let stats = up.prog.stats().unwrap();
        assert_eq!(stats.redirected, 2, "{stats:?}");
        assert!(stats.passed >= 3, "{stats:?}");
        up.prog.detach().unwrap();
    }

    #[test]
    fn frames_sent_on_the_socket_reach_the_peer() {
        let Some(mut up) = setup() else { return };
        let raw = up
            .net
            .in_b(|| RawSocket::open(&up.net.b).expect("AF_PACKET in B"));
        let mut pkt = Packet::new();

        pkt.fill(&frame(up.net.mac_b, ENDPOINT_MAC, None, b"vsx-from-switch"));
        up.port.send(&pkt).unwrap();
        up.port.flush().unwrap();
        let got = raw.recv_matching(Duration::from_secs(2), |f| contains(f, b"vsx-from-switch"));
        assert_eq!(got.expect("frame at B")[6..12], ENDPOINT_MAC);

        // A partial checksum is completed on the way out.
        let mut udp = ipv4_udp(
            up.net.mac_b,
            ENDPOINT_MAC,
            [10, 77, up.net.subnet, 50],
            up.net.ip_b,
        );
        let mut pseudo = Vec::from(&udp[26..34]);
        pseudo.extend_from_slice(&[0, 17, 0, 12]);
        let seed = fold(ones_complement_sum(&pseudo));
        udp[40..42].copy_from_slice(&seed.to_be_bytes());
        pkt.fill(&udp);
        pkt.vnet.flags = VirtioNetHdr::F_NEEDS_CSUM;
        pkt.vnet.csum_start = 34;
        pkt.vnet.csum_offset = 6;
        up.port.send(&pkt).unwrap();
        up.port.flush().unwrap();
        let got = raw
            .recv_matching(Duration::from_secs(2), |f| contains(f, b"vsxt"))
            .expect("UDP frame at B");
        let mut check = pseudo.clone();
        check.extend_from_slice(&got[34..46]);
        assert_eq!(
            fold(ones_complement_sum(&check)),
            0xffff,
            "UDP checksum verifies"
        );

        // GSO frames are refused.
        pkt.vnet.gso_type = 1;
        assert_eq!(
            up.port.send(&pkt).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );

        // Many frames in one flush (more than copy mode's per-call budget).
        pkt.fill(&frame(up.net.mac_b, ENDPOINT_MAC, None, b"vsx-burst"));
        for _ in 0..100 {
            up.port.send(&pkt).unwrap();
        }
        up.port.flush().unwrap();
        let mut seen = 0;
        while raw
            .recv_matching(Duration::from_millis(500), |f| contains(f, b"vsx-burst"))
            .is_some()
        {
            seen += 1;
        }
        assert_eq!(seen, 100);
        up.prog.detach().unwrap();
    }

    #[test]
    fn endpoint_ip_traffic_reaches_the_socket_and_the_host_keeps_its_own() {
        let Some(mut up) = setup() else { return };
        let raw = up
            .net
            .in_b(|| RawSocket::open(&up.net.b).expect("AF_PACKET in B"));
        let wait = Duration::from_secs(2);
        let ep4 = [10, 77, up.net.subnet, 50];
        let ep6 = Ipv6Addr::new(0xfd77, up.net.subnet.into(), 0, 0, 0, 0, 0, 0x50);
        let b6 = Ipv6Addr::new(0xfd77, up.net.subnet.into(), 0, 0, 0, 0, 0, 2);
        up.prog
            .add_ip(0, IpAddr::V4(Ipv4Addr::from(ep4)), false)
            .unwrap();
        up.prog.add_ip(0, IpAddr::V6(ep6), false).unwrap();

        // (b) ARP request for the endpoint IP.
        raw.send(&arp_request(up.net.mac_b, up.net.ip_b, ep4))
            .unwrap();
        let got = recv_matching(&mut up.port, wait, |f| f[12..14] == [0x08, 0x06]);
        assert_eq!(got.expect("ARP request at the socket")[38..42], ep4);

        // (a) unicast IPv4 to the endpoint IP, addressed to the uplink's MAC.
        raw.send(&ipv4_udp(up.net.mac_a, up.net.mac_b, up.net.ip_b, ep4))
            .unwrap();
        let got = recv_matching(&mut up.port, wait, |f| contains(f, b"vsxt"));
        assert_eq!(got.expect("IPv4 at the socket")[30..34], ep4);

        // (c) neighbour solicitation for the endpoint IPv6 address.
        raw.send(&neighbour_solicitation(up.net.mac_b, b6, ep6))
            .unwrap();
        let got = recv_matching(&mut up.port, wait, |f| f.len() > 54 && f[54] == 135);
        assert_eq!(got.expect("NS at the socket")[62..78], ep6.octets());

        // The host's own address still answers, over ARP and ND that the
        // program leaves to it.
        let a4 = format!("10.77.{}.1", up.net.subnet);
        let a6 = format!("fd77:{}::1", up.net.subnet);
        let ns_b = up.net.ns_b.clone();
        for (cmd, target) in [("ping", &a4), ("ping", &a6)] {
            let out = up
                .net
                .exec(&ns_b, &[cmd, "-c", "2", "-i", "0.2", "-W", "2", target])
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd} {target} from B: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let stats = up.prog.stats().unwrap();
        assert_eq!(stats.redirected, 3, "{stats:?}");
        assert!(stats.passed > 0, "{stats:?}");
        up.prog.detach().unwrap();
    }

    /// Frames the peer's own stack sends carry a partial checksum (the peer
    /// offloads TX checksums to the veth, its default), and XDP hands them
    /// over as they are: the port flags them `F_NEEDS_CSUM`, and completing
    /// the checksum as flagged gives one that verifies.
    #[test]
    fn stack_traffic_from_the_peer_arrives_flagged_with_its_partial_checksum() {
        let Some(mut up) = setup() else { return };
        assert!(up.port.flags_partial_checksums(), "a veth in copy mode");
        let ep = format!("10.77.{}.50", up.net.subnet);
        up.prog.add_ip(0, ep.parse().unwrap(), false).unwrap();
        let mac_a = crate::ebpf::testnet::mac_text(up.net.mac_a);
        let (ns_b, b) = (up.net.ns_b.clone(), up.net.b.clone());
        up.net
            .ip(&ns_b, &["neigh", "add", &ep, "lladdr", &mac_a, "dev", &b])
            .unwrap();
        up.net.in_b(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(&[7u8; 1400], format!("{ep}:9999")).unwrap();
        });
        let mut batch: Vec<Packet> = (0..4).map(|_| Packet::new()).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            let n = up.port.recv_batch(&mut batch).expect("recv_batch");
            got = batch[..n].iter().position(|p| {
                let f = p.frame();
                f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 17
            });
            if n == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let pkt = &mut batch[got.expect("UDP at the socket")];
        assert_eq!(pkt.vnet.flags, VirtioNetHdr::F_NEEDS_CSUM, "{:?}", pkt.vnet);
        assert_eq!((pkt.vnet.csum_start, pkt.vnet.csum_offset), (34, 6));
        let (start, offset) = (pkt.vnet.csum_start, pkt.vnet.csum_offset);
        fill_checksum(pkt.frame_mut(), start.into(), offset.into()).unwrap();
        let f = pkt.frame();
        let udp_len = usize::from(u16::from_be_bytes([f[38], f[39]]));
        let mut check = Vec::from(&f[26..34]);
        check.extend_from_slice(&[0, 17]);
        check.extend_from_slice(&(udp_len as u16).to_be_bytes());
        check.extend_from_slice(&f[34..34 + udp_len]);
        assert_eq!(fold(ones_complement_sum(&check)), 0xffff);
        up.prog.detach().unwrap();
    }

    #[test]
    fn endpoint_frames_go_to_the_host_without_a_socket() {
        let Some(mut up) = setup() else { return };
        let raw = up
            .net
            .in_b(|| RawSocket::open(&up.net.b).expect("AF_PACKET in B"));
        up.prog.add_mac(0, ENDPOINT_MAC, false).unwrap();
        up.prog.unregister_xsk(0).unwrap();
        raw.send(&frame(ENDPOINT_MAC, up.net.mac_b, None, b"vsx-nosock"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while up.prog.stats().unwrap().no_socket == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(up.prog.stats().unwrap().no_socket, 1);
        assert!(recv_matching(&mut up.port, Duration::from_millis(200), |_| true).is_none());
        up.prog.detach().unwrap();
    }
}
