//! TAP devices carrying a virtio-net header in front of every frame.
//!
//! With `offload` the kernel may hand the switch TCP/UDP super-frames (GSO)
//! and frames whose checksum is still to be filled in, described by the
//! [`VirtioNetHdr`]; the switch passes them on unchanged to another TAP, and
//! whoever finally needs wire-sized frames segments them. Without `offload`
//! the kernel segments and checksums before handing frames over, and the
//! header is all zeros. Frames written to a TAP may carry GSO metadata
//! either way: what the kernel accepts from us does not depend on the
//! offload flags, which only describe what we accept.
//!
//! A TAP is created in the namespace of the calling thread (use
//! [`crate::netns::Netns::run`]); its file descriptor keeps working when the
//! link is later moved to another namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use thiserror::Error;

use super::{Packet, PortIo, VirtioNetHdr, VNET_HDR_LEN};

/// ioctl numbers from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Fail with EBUSY instead of attaching when the device exists.
const IFF_TUN_EXCL: libc::c_short = 0x8000u16 as libc::c_short;

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

use crate::ifname::{IfName, InvalidIfName, IFNAMSIZ};

/// The largest MTU a TAP takes: the kernel's 65535 less the Ethernet
/// header (`tun` sets `max_mtu = MAX_MTU - hard_header_len`).
pub const MAX_MTU: u32 = 65535 - 14;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("invalid TAP name {name:?}: {reason}")]
    InvalidName {
        name: String,
        reason: crate::ifname::IfNameError,
    },
    #[error("a link named {0} already exists")]
    Exists(String),
    #[error("TAP {0} is already open elsewhere")]
    Busy(String),
    #[error("{call} on TAP {name}: {source}")]
    Sys {
        call: &'static str,
        name: String,
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF uses it: a name and a short of flags.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// An open TAP device; closing it (on drop) removes the device unless it
/// is persistent.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    offload: bool,
}

/// The control plane's descriptor of a TAP the datapath switches; see
/// [`Tap::owner`].
#[derive(Debug)]
pub struct TapOwner {
    tap: Tap,
}

impl TapOwner {
    /// Makes the device go away once every descriptor of it is closed: the
    /// datapath's, when its port is removed, and this one, when dropped.
    pub fn unpersist(&self) -> Result<(), TapError> {
        self.tap.set_persist(false)
    }
}

impl Tap {
    /// Opens the TAP called `name` in the calling thread's namespace,
    /// creating it if needed; an existing persistent TAP of that name is
    /// attached to, which is how the daemon takes its ports back after a
    /// restart.
    pub fn open(name: &str, offload: bool) -> Result<Tap, TapError> {
        Tap::open_flags(name, offload, 0)
    }

    /// Creates a new TAP called `name`; fails with [`TapError::Exists`] when
    /// any link of that name exists in the calling thread's namespace.
    pub fn create(name: &str, offload: bool) -> Result<Tap, TapError> {
        IfName::checked(name)?;
        let cname = std::ffi::CString::new(name).expect("validated: no NUL");
        // A friendlier answer for links that are not TAPs; IFF_TUN_EXCL
        // below is what makes creation atomic.
        // SAFETY: cname is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
            return Err(TapError::Exists(name.to_string()));
        }
        Tap::open_flags(name, offload, IFF_TUN_EXCL)
    }

    fn open_flags(name: &str, offload: bool, extra: libc::c_short) -> Result<Tap, TapError> {
        IfName::checked(name)?;
        let sys = |call, source| TapError::Sys {
            call,
            name: name.to_string(),
            source,
        };
        // SAFETY: the path is a NUL-terminated literal.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(sys("open /dev/net/tun", io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; req is one.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EBUSY) if extra & IFF_TUN_EXCL != 0 => {
                    TapError::Exists(name.to_string())
                }
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                _ => sys("TUNSETIFF", err),
            });
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(sys("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }

        let tap = Tap {
            fd,
            name: name.to_string(),
            offload,
        };
        tap.set_offload()?;
        Ok(tap)
    }

    fn set_offload(&self) -> Result<(), TapError> {
        let set = |flags: libc::c_uint| {
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            if unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    TUNSETOFFLOAD as _,
                    flags as libc::c_ulong,
                )
            } < 0
            {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let res = if self.offload {
            let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            // UDP segmentation offload needs Linux 6.2.
            match set(tcp | TUN_F_USO4 | TUN_F_USO6) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => set(tcp),
                other => other,
            }
        } else {
            set(0)
        };
        res.map_err(|source| self.sys("TUNSETOFFLOAD", source))
    }

    /// Makes the device outlive this descriptor (and the daemon), or not.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its flag by value.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETPERSIST as _,
                persist as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(self.sys("TUNSETPERSIST", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// A second descriptor of this TAP, for the control plane to remove the
    /// device with while the datapath holds the first one. It reaches the
    /// device wherever it is, even when its namespace no longer has a name.
    pub fn owner(&self) -> Result<TapOwner, TapError> {
        let fd = self.fd.try_clone().map_err(|e| self.sys("dup", e))?;
        Ok(TapOwner {
            tap: Tap {
                fd,
                name: self.name.clone(),
                offload: self.offload,
            },
        })
    }

    /// A second descriptor of the same TAP, for a second writer (an
    /// uplink's punt TAP is its trunk's queue and its super-frame port).
    /// The device stays until both are closed.
    pub fn try_clone(&self) -> Result<Tap, TapError> {
        let fd = self.fd.try_clone().map_err(|e| self.sys("dup", e))?;
        Ok(Tap {
            fd,
            name: self.name.clone(),
            offload: self.offload,
        })
    }

    /// The name the TAP was opened under.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    fn sys(&self, call: &'static str, source: io::Error) -> TapError {
        TapError::Sys {
            call,
            name: self.name.clone(),
            source,
        }
    }
}

impl From<InvalidIfName> for TapError {
    fn from(e: InvalidIfName) -> TapError {
        TapError::InvalidName {
            name: e.name,
            reason: e.reason,
        }
    }
}

impl PortIo for Tap {
    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv_batch(&mut self, batch: &mut [Packet]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < batch.len() {
            let pkt = &mut batch[filled];
            // The header goes to the stack and is copied in afterwards, so
            // the two iovecs never alias one borrow of the packet.
            let mut hdr = [0u8; VNET_HDR_LEN];
            let buf = pkt.buffer_mut();
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            // SAFETY: both iovecs point at live, writable buffers of the
            // stated lengths for the duration of the call.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    // Frames already received are delivered; a persistent
                    // error shows up again on the next call.
                    _ if filled > 0 => break,
                    _ => return Err(err),
                }
            }
            let n = n as usize;
            if n < VNET_HDR_LEN {
                continue;
            }
            pkt.set_len(n - VNET_HDR_LEN);
            pkt.vnet = VirtioNetHdr::from_bytes(&hdr);
            filled += 1;
        }
        Ok(filled)
    }

    fn send(&mut self, pkt: &Packet) -> io::Result<()> {
        super::write_with_vnet_hdr(self.fd.as_raw_fd(), pkt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::netlink::{LinkChange, Netlink};
    use crate::netns::testns::{root_or_skip, TestNetns};
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    #[test]
    fn vnet_header_round_trips() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "tap%d", "a/b", "0123456789abcdef", "a b"] {
            assert!(
                matches!(Tap::open(bad, false), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    fn netlink_index(name: &str) -> Option<u32> {
        Netlink::open().unwrap().link_index(name).unwrap()
    }

    /// Whether the link disappears within two seconds: the kernel unregisters
    /// a closed TAP soon, not always before close() returns on a busy machine.
    fn gone_soon(name: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            if netlink_index(name).is_none() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `tap` until `pred` accepts a frame or `timeout` passes.
    fn wait_for(tap: &mut Tap, timeout: Duration, pred: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = Instant::now() + timeout;
        let mut batch: Vec<Packet> = (0..4).map(|_| Packet::new()).collect();
        loop {
            let n = tap.recv_batch(&mut batch).unwrap();
            if let Some(i) = (0..n).find(|&i| pred(&batch[i])) {
                return batch.swap_remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no matching frame on {}",
                tap.name()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn persistent_tap_is_reattached_by_name() {
        if !root_or_skip("persistent_tap_is_reattached_by_name") {
            return;
        }
        let t = TestNetns::new("tap");
        t.netns()
            .run(|| {
                let tap = Tap::create("vstap0", true).unwrap();
                let info = Netlink::open()
                    .unwrap()
                    .link_info("vstap0")
                    .unwrap()
                    .unwrap();
                assert_eq!(info.kind.as_deref(), Some("tun"));
                tap.set_persist(true).unwrap();
                drop(tap);
                assert_eq!(netlink_index("vstap0"), Some(info.index));

                assert!(matches!(
                    Tap::create("vstap0", true),
                    Err(TapError::Exists(_))
                ));
                assert!(matches!(Tap::create("lo", true), Err(TapError::Exists(_))));

                let again = Tap::open("vstap0", false).unwrap();
                assert_eq!(netlink_index("vstap0"), Some(info.index));
                // Only one descriptor may hold a single-queue TAP.
                assert!(matches!(Tap::open("vstap0", false), Err(TapError::Busy(_))));
                again.set_persist(false).unwrap();
                drop(again);
                assert!(gone_soon("vstap0"), "vstap0 outlived its last descriptor");
            })
            .unwrap();
    }

    /// The kernel resolves a neighbour out of the TAP, we answer the ARP
    /// request from the switch side, and the queued UDP datagram follows.
    #[test]
    fn frames_cross_between_kernel_and_switch() {
        if !root_or_skip("frames_cross_between_kernel_and_switch") {
            return;
        }
        let t = TestNetns::new("tapio");
        let ns = t.netns();
        let (mut tap, sock) = ns
            .run(|| {
                let tap = Tap::create("vstap1", false).unwrap();
                let mut nl = Netlink::open().unwrap();
                let idx = nl.link_index("vstap1").unwrap().unwrap();
                nl.link_set(
                    idx,
                    &LinkChange {
                        up: Some(true),
                        mac: Some([2, 0, 0, 0, 0, 1]),
                        ..Default::default()
                    },
                )
                .unwrap();
                nl.addr_add(idx, "10.88.0.1".parse().unwrap(), 24).unwrap();
                let sock = UdpSocket::bind("10.88.0.1:0").unwrap();
                (tap, sock)
            })
            .unwrap();

        sock.send_to(b"hello switch", "10.88.0.2:9").unwrap();
        let arp = wait_for(&mut tap, Duration::from_secs(3), |p| {
            let f = p.frame();
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 88, 0, 2]
        });
        assert_eq!(&arp.frame()[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(arp.vnet, VirtioNetHdr::default());

        // ARP reply from 10.88.0.2 at 02:00:00:00:00:02.
        let peer_mac = [2, 0, 0, 0, 0, 2];
        let mut reply = Vec::new();
        reply.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        reply.extend_from_slice(&peer_mac);
        reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&peer_mac);
        reply.extend_from_slice(&[10, 88, 0, 2]);
        reply.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        reply.extend_from_slice(&[10, 88, 0, 1]);
        let mut pkt = Packet::new();
        pkt.fill(&reply);
        tap.send(&pkt).unwrap();

        let udp = wait_for(&mut tap, Duration::from_secs(3), |p| {
            let f = p.frame();
            f.len() > 42 && f[12..14] == [0x08, 0x00] && f[23] == 17
        });
        let f = udp.frame();
        assert_eq!(&f[0..6], &peer_mac);
        assert_eq!(&f[42..], b"hello switch");
        // Without offload the kernel hands over finished frames.
        assert_eq!(udp.vnet, VirtioNetHdr::default());
        assert_ne!(&f[40..42], &[0, 0], "UDP checksum filled in");
        let neigh = t.ip(&["neigh", "show", "10.88.0.2"]);
        assert!(neigh.contains("02:00:00:00:00:02"), "{neigh}");
        drop(tap);
        assert!(
            ns.run(|| gone_soon("vstap1")).unwrap(),
            "vstap1 outlived its descriptor"
        );
    }

    /// Two namespaces joined by two TAPs and a copy loop: with offload the
    /// loop sees TCP super-frames larger than the MTU and passes them on
    /// with their virtio-net header.
    #[test]
    fn offload_passes_gso_frames() {
        if !root_or_skip("offload_passes_gso_frames") {
            return;
        }
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let (t1, t2) = (TestNetns::new("gso1"), TestNetns::new("gso2"));
        let setup = |t: &TestNetns, mac: u8, ip: &str| {
            t.netns()
                .run(|| {
                    let tap = Tap::create("vsgso", true).unwrap();
                    let mut nl = Netlink::open().unwrap();
                    let idx = nl.link_index("vsgso").unwrap().unwrap();
                    nl.link_set(
                        idx,
                        &LinkChange {
                            up: Some(true),
                            mac: Some([2, 0, 0, 0, 1, mac]),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    nl.addr_add(idx, ip.parse().unwrap(), 24).unwrap();
                    tap
                })
                .unwrap()
        };
        let mut a = setup(&t1, 1, "10.89.0.1");
        let mut b = setup(&t2, 2, "10.89.0.2");

        let stop = AtomicBool::new(false);
        let largest = AtomicUsize::new(0);
        let gso_frames = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut batch: Vec<Packet> = (0..8).map(|_| Packet::new()).collect();
                while !stop.load(Ordering::Relaxed) {
                    let mut moved = 0;
                    for dir in 0..2 {
                        let (from, to) = if dir == 0 {
                            (&mut a, &mut b)
                        } else {
                            (&mut b, &mut a)
                        };
                        let n = from.recv_batch(&mut batch).unwrap();
                        for p in &batch[..n] {
                            largest.fetch_max(p.frame().len(), Ordering::Relaxed);
                            if p.vnet.is_gso() {
                                gso_frames.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = to.send(p);
                        }
                        moved += n;
                    }
                    if moved == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            });

            let listener = t2
                .netns()
                .run(|| TcpListener::bind("10.89.0.2:5001").unwrap())
                .unwrap();
            let server = s.spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut total = 0;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = conn.read(&mut buf).unwrap();
                    if n == 0 {
                        return total;
                    }
                    total += n;
                }
            });
            let mut client = t1
                .netns()
                .run(|| TcpStream::connect("10.89.0.2:5001").unwrap())
                .unwrap();
            let chunk = vec![0x5au8; 256 * 1024];
            for _ in 0..16 {
                client.write_all(&chunk).unwrap();
            }
            drop(client);
            let total = server.join().unwrap();
            stop.store(true, Ordering::Relaxed);
            assert_eq!(total, 16 * chunk.len());
        });
        let largest = largest.into_inner();
        let gso = gso_frames.into_inner();
        eprintln!("largest frame {largest} bytes, {gso} GSO frames");
        assert!(largest > 1514, "largest frame {largest}");
        assert!(gso > 0);
    }
}
