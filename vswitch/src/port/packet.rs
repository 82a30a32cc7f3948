//! A transmit-only packet socket (`AF_PACKET`) on an uplink, for GSO
//! super-frames.
//!
//! AF_XDP carries only frames that fit one UMEM chunk, so a TCP super-frame
//! from a TAP would have to be cut into wire-sized segments in software, and
//! in copy mode every segment then costs an skb and the whole kernel path
//! behind the device, paid in the switch's `sendto`. A packet socket with
//! `PACKET_VNET_HDR` hands the kernel the super-frame with its virtio-net
//! header instead, and the device (or the kernel, as late as possible)
//! segments it, as it does for the host's own traffic. Frames that are not
//! super-frames still leave through AF_XDP.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{Packet, PortIo};

/// `SOL_PACKET` option: every frame starts with a virtio-net header.
const PACKET_VNET_HDR: libc::c_int = 15;
/// `SOL_PACKET` option: straight to the driver, as AF_XDP transmits, so
/// the two paths keep a flow's order.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// Send buffer: room for dozens of super-frames waiting for a real NIC to
/// complete them (the default holds about three).
const SEND_BUFFER: libc::c_int = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PacketSocketError {
    #[error("{call} on {ifname}: {source}")]
    Sys {
        call: &'static str,
        ifname: String,
        source: io::Error,
    },
}

/// A packet socket bound to one interface, sending frames with their
/// virtio-net header. It never receives (its protocol is 0).
pub struct SuperFrameTx {
    fd: OwnedFd,
}

impl SuperFrameTx {
    /// Opens it on `ifindex`, in the calling thread's network namespace.
    pub fn open(ifname: &str, ifindex: u32) -> Result<SuperFrameTx, PacketSocketError> {
        let sys = |call, source| PacketSocketError::Sys {
            call,
            ifname: ifname.to_owned(),
            source,
        };
        // Protocol 0: the socket receives nothing.
        // SAFETY: socket() takes no pointers; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(sys("socket(AF_PACKET)", io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let set = |level, name, value: libc::c_int, call| {
            // SAFETY: passes a live c_int of the size given.
            let ret = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret < 0 {
                Err(sys(call, io::Error::last_os_error()))
            } else {
                Ok(())
            }
        };
        set(
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            1,
            "setsockopt(PACKET_VNET_HDR)",
        )?;
        set(
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            1,
            "setsockopt(PACKET_QDISC_BYPASS)",
        )?;
        set(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SEND_BUFFER,
            "setsockopt(SO_SNDBUFFORCE)",
        )?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter
        // are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a live sockaddr_ll of the size given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(sys("bind", io::Error::last_os_error()));
        }
        Ok(SuperFrameTx { fd })
    }
}

impl PortIo for SuperFrameTx {
    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Transmit only: there is never anything to receive.
    fn recv_batch(&mut self, _batch: &mut [Packet]) -> io::Result<usize> {
        Ok(0)
    }

    fn send(&mut self, pkt: &Packet) -> io::Result<()> {
        // Bound to the interface: no address is needed.
        super::write_with_vnet_hdr(self.fd.as_raw_fd(), pkt)
    }
}
