//! Port backends: how frames enter and leave the switch.
//!
//! Every backend implements [`PortIo`]; the datapath never sees which kind of
//! port it drives. A frame travels as a [`Packet`]: the Ethernet frame plus
//! the offload metadata the kernel attached to it (a virtio-net header), so a
//! TCP super-frame read from one TAP can be written to another unchanged.

pub mod afxdp;
pub mod packet;
pub mod tap;

use std::io;
use std::os::fd::RawFd;

/// Largest frame a port hands the switch: a 64 KiB GSO super-frame plus its
/// Ethernet and VLAN headers, with room to spare.
pub const MAX_FRAME: usize = 65536 + 256;

/// Frames a port receives per poll before the datapath moves on.
pub const BATCH: usize = 32;

/// Frames an uplink queue hands over per poll: at least the 45 wire-sized
/// TCP segments of a 64 KiB super-frame, so receive coalescing is not cut
/// short by the batch (with 32, runs averaged about 19 segments).
pub const UPLINK_BATCH: usize = 64;

/// `struct virtio_net_hdr` (10 bytes, host byte order), as the TAP driver
/// reads and writes it in front of each frame with `IFF_VNET_HDR`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

const _: () = assert!(std::mem::size_of::<VirtioNetHdr>() == VNET_HDR_LEN);

impl VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at csum_start+csum_offset
    /// is still to be computed.
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const GSO_NONE: u8 = 0;

    /// True when the frame is a GSO super-frame the receiver must segment.
    pub fn is_gso(&self) -> bool {
        self.gso_type != Self::GSO_NONE
    }

    /// The header as the kernel reads it (host byte order).
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_ne_bytes([b[2], b[3]]),
            gso_size: u16::from_ne_bytes([b[4], b[5]]),
            csum_start: u16::from_ne_bytes([b[6], b[7]]),
            csum_offset: u16::from_ne_bytes([b[8], b[9]]),
        }
    }
}

/// Length of [`VirtioNetHdr`] on the wire to the kernel.
pub const VNET_HDR_LEN: usize = 10;

/// One frame and its offload metadata, in a buffer owned by the datapath and
/// reused for every frame (no allocation per packet).
pub struct Packet {
    pub vnet: VirtioNetHdr,
    buf: Box<[u8]>,
    len: usize,
}

impl Packet {
    pub fn new() -> Packet {
        Packet {
            vnet: VirtioNetHdr::default(),
            buf: vec![0; MAX_FRAME].into_boxed_slice(),
            len: 0,
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The whole buffer, for a backend to receive into; follow with
    /// [`Packet::set_len`].
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.buf.len(), "frame length {len} exceeds buffer");
        self.len = len;
    }

    /// Copies `frame` in, with no offload metadata (used by tests and by
    /// frames the switch builds itself).
    pub fn fill(&mut self, frame: &[u8]) {
        self.buf[..frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        self.vnet = VirtioNetHdr::default();
    }
}

impl Default for Packet {
    fn default() -> Self {
        Packet::new()
    }
}

/// Writes a frame preceded by its virtio-net header, as TAPs and packet
/// sockets with `PACKET_VNET_HDR` take them, in one `writev`.
pub(crate) fn write_with_vnet_hdr(fd: RawFd, pkt: &Packet) -> io::Result<()> {
    let hdr = pkt.vnet.to_bytes();
    let frame = pkt.frame();
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: VNET_HDR_LEN,
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    loop {
        // SAFETY: both iovecs point at live buffers of the stated lengths;
        // writev only reads them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        if n >= 0 {
            return Ok(());
        }
        // EAGAIN arrives as ErrorKind::WouldBlock, which the datapath
        // counts as a drop.
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A port as the datapath drives it: non-blocking, polled through a file
/// descriptor.
pub trait PortIo: Send {
    /// Readable when frames are waiting (registered with epoll).
    fn raw_fd(&self) -> RawFd;

    /// Receives up to `batch.len()` frames; returns how many were filled.
    /// Returns 0 when nothing is waiting.
    fn recv_batch(&mut self, batch: &mut [Packet]) -> io::Result<usize>;

    /// Sends one frame (or queues it until [`PortIo::flush`]).
    fn send(&mut self, pkt: &Packet) -> io::Result<()>;

    /// Pushes out anything `send` queued. The datapath calls it after each
    /// batch.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
