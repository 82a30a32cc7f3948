//! First-packet classification cost of the ACL layer for 1, 100 and 10,000
//! rules: `cargo bench -p vswitch --bench classify`. Plain timing loops
//! (the stable toolchain has no `#[bench]`); each figure is the median of
//! five runs of 200,000 lookups over packets that hit, miss and match
//! rules spread over the table.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use vswitch::pipeline::acl::{AclPacket, AclTable};
use vswitch::policy::{parse_document, Acl, Direction, Policy};

fn rules(n: u32) -> Vec<Acl> {
    let doc: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"Type":"ACL","Action":"Block","Direction":"In","Protocols":"6","LocalPorts":"{}","RemoteAddresses":"10.{}.{}.0/24","Priority":{}}}"#,
                1000 + i,
                i / 256 % 256,
                i % 256,
                1 + i % 60_000
            )
        })
        .collect();
    parse_document(&format!("[{}]", doc.join(",")))
        .expect("valid rules")
        .into_iter()
        .map(|p| match p {
            Policy::Acl(a) => a,
            _ => unreachable!(),
        })
        .collect()
}

fn main() {
    const LOOKUPS: u32 = 200_000;
    for n in [1u32, 100, 10_000] {
        let table = AclTable::new(&rules(n));
        let packets: Vec<AclPacket> = (0..1024u32)
            .map(|i| AclPacket {
                direction: Direction::In,
                proto: 6,
                local: "10.0.0.2".parse().unwrap(),
                remote: IpAddr::from([10, (i / 256 % 256) as u8, (i % 256) as u8, 9]),
                local_port: 1000 + (i * 7) as u16 % (n as u16 + 10),
                remote_port: 40000,
            })
            .collect();
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let mut hits = 0u32;
                for i in 0..LOOKUPS {
                    if table
                        .lookup(black_box(&packets[(i % 1024) as usize]))
                        .is_some()
                    {
                        hits += 1;
                    }
                }
                black_box(hits);
                start.elapsed().as_nanos() as f64 / f64::from(LOOKUPS)
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "acl classify: {n:>6} rules, {} shapes: {:.0} ns per first packet",
            table.shapes(),
            runs[2]
        );
    }
}
