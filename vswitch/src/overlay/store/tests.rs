//! Key and value encoding (no etcd), then the store against a real etcd:
//! Debian's `etcd-server` (`/usr/bin/etcd`), one server per test on loopback
//! ports of its own, killed and its data removed when the test ends.

use super::*;

use std::net::{Ipv6Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Barrier, Condvar};
use std::time::Instant as StdInstant;

const P: &str = DEFAULT_PREFIX;

fn mapping(host: &str, vsid: u32, ca: IpAddr) -> Mapping {
    Mapping {
        vsid,
        ca,
        mac: [0x02, 0, 0, 0, 0, 1],
        pa: Ipv4Addr::new(192, 0, 2, 1),
        host: host.into(),
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

// ---------------------------------------------------------------------------
// Keys and values.

#[test]
fn keys_round_trip() {
    assert_eq!(network_key(P, "blue"), "/vswitch/v1/networks/blue");
    assert_eq!(
        parse_key(P, b"/vswitch/v1/networks/blue"),
        Ok(KeyRef::Network("blue".into()))
    );
    let v6: IpAddr = "fd00::1".parse().unwrap();
    for ca in [v4(7), v6] {
        let key = mapping_key(P, 4096, ca);
        assert_eq!(
            parse_key(P, key.as_bytes()),
            Ok(KeyRef::Mapping { vsid: 4096, ca })
        );
    }
    assert_eq!(
        mapping_key(P, 4096, v6),
        "/vswitch/v1/mappings/4096/fd00::1"
    );
}

#[test]
fn keys_of_other_forms_are_refused() {
    for key in [
        "/vswitch/v1/mappings/4096/fd00:0::1",    // not canonical
        "/vswitch/v1/mappings/04096/10.0.0.1",    // not canonical
        "/vswitch/v1/mappings/16777216/10.0.0.1", // over 24 bits
        "/vswitch/v1/mappings/4096",
        "/vswitch/v1/mappings/x/10.0.0.1",
        "/vswitch/v1/mappings/4096/10.0.0.256",
        "/vswitch/v1/networks/",
        "/vswitch/v1/networks/a/b",
        "/vswitch/v1/hosts/h1",
        "/vswitch/v2/networks/blue",
    ] {
        assert!(parse_key(P, key.as_bytes()).is_err(), "{key}");
    }
    assert!(parse_key(P, b"/vswitch/v1/networks/\xff").is_err());
}

#[test]
fn values_round_trip() {
    let net = SharedNetwork {
        name: "blue".into(),
        spec: serde_json::json!({"Name": "blue", "Type": "overlay"}),
    };
    let value = encode_network(&net);
    let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(json["v"], 1);
    assert_eq!(
        decode(&KeyRef::Network("blue".into()), &value),
        Ok(Record::Network(net))
    );

    let m = Mapping {
        mac: [0x02, 0xab, 0, 0, 0, 0xff],
        ..mapping("h1", 4096, "fd00::5".parse().unwrap())
    };
    let value = encode_mapping(&m);
    let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(json["v"], 1);
    assert_eq!(json["mac"], "02:ab:00:00:00:ff");
    let key = KeyRef::Mapping {
        vsid: 4096,
        ca: m.ca,
    };
    assert_eq!(decode(&key, &value), Ok(Record::Mapping(m.clone())));
    assert_eq!(owner_of(&value).as_deref(), Some("h1"));
    // Fields a later v1 adds are ignored.
    let mut extra = json.clone();
    extra["weight"] = 3.into();
    let extra = serde_json::to_vec(&extra).unwrap();
    assert_eq!(decode(&key, &extra), Ok(Record::Mapping(m)));
}

#[test]
fn values_this_version_does_not_understand_are_errors() {
    let key = KeyRef::Mapping {
        vsid: 4096,
        ca: v4(1),
    };
    let good: serde_json::Value =
        serde_json::from_slice(&encode_mapping(&mapping("h1", 4096, v4(1)))).unwrap();
    let with = |field: &str, v: serde_json::Value| {
        let mut j = good.clone();
        j[field] = v;
        serde_json::to_vec(&j).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not JSON"),
        (b"{}".to_vec(), "no schema version"),
        (with("v", 2.into()), "schema version 2"),
        (with("vsid", 4097.into()), "its key"),
        (with("ca", "10.0.0.2".into()), "its key"),
        (with("mac", "02:00:00:00:00".into()), "MAC"),
        (with("mac", "02:00:00:00:00:0g".into()), "MAC"),
        (with("pa", "fd00::1".into()), "bad mapping value"),
        (with("host", "a b".into()), "host id"),
        (with("host", serde_json::Value::Null), "bad mapping value"),
    ];
    for (value, why) in cases {
        let err = decode(&key, &value).unwrap_err();
        assert!(err.contains(why), "{err:?} should say {why:?}");
    }
    assert_eq!(owner_of(&with("v", 2.into())), None);
    let net = serde_json::to_vec(&serde_json::json!({"v": 1, "name": "red", "spec": {}})).unwrap();
    assert!(decode(&KeyRef::Network("blue".into()), &net).is_err());
}

#[test]
fn inputs_are_checked_before_anything_is_sent() {
    let ok = StoreConfig::new(vec!["http://127.0.0.1:2379".into()], "host-1.a_b");
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.lease_ttl, Duration::from_secs(10));
    assert_eq!(ok.prefix, "/vswitch/v1/");
    let bad = [
        StoreConfig {
            host_id: String::new(),
            ..ok.clone()
        },
        StoreConfig {
            host_id: "a/b".into(),
            ..ok.clone()
        },
        StoreConfig {
            host_id: "h".repeat(65),
            ..ok.clone()
        },
        StoreConfig {
            endpoints: vec![],
            ..ok.clone()
        },
        StoreConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            ..ok.clone()
        },
        StoreConfig {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ..ok.clone()
        },
        StoreConfig {
            endpoints: vec!["http://".into()],
            ..ok.clone()
        },
        StoreConfig {
            lease_ttl: Duration::from_millis(1500),
            ..ok.clone()
        },
        StoreConfig {
            lease_ttl: Duration::ZERO,
            ..ok.clone()
        },
        StoreConfig {
            prefix: "vswitch/".into(),
            ..ok.clone()
        },
        StoreConfig {
            prefix: "/vswitch".into(),
            ..ok.clone()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(cfg.validate(), Err(StoreError::Invalid(_))),
            "{cfg:?}"
        );
        assert!(Store::start(cfg, Box::new(|_| {})).is_err());
    }
    for name in ["", "-a", "a/b", "a b", &"n".repeat(65)] {
        assert!(check_network_name(name).is_err(), "{name:?}");
    }
    assert!(check_network_name("blue-1.x_y").is_ok());
    assert!(check_mapping(&mapping("h1", MAX_VSID + 1, v4(1))).is_err());
    assert!(check_mapping(&mapping("h1", 1, IpAddr::V6(Ipv6Addr::UNSPECIFIED))).is_err());
    assert!(check_mapping(&Mapping {
        pa: Ipv4Addr::BROADCAST,
        ..mapping("h1", 1, v4(1))
    })
    .is_err());

    // The store refuses bad input itself, before talking to etcd (which
    // here does not exist).
    let cfg = StoreConfig::new(vec!["http://127.0.0.1:9".into()], "h1");
    let store = Store::start(cfg, Box::new(|_| {})).unwrap();
    assert!(matches!(
        store.claim(&mapping("h2", 1, v4(1))),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.put_network(&SharedNetwork {
            name: "a b".into(),
            spec: serde_json::Value::Null
        }),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.delete_network(""),
        Err(StoreError::Invalid(_))
    ));
}

// ---------------------------------------------------------------------------
// A real etcd.

const ETCD: &str = "/usr/bin/etcd";
const TTL: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One etcd server: its process, data directory and ports (kept across a
/// restart, as a real server's would be).
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

impl Etcd {
    /// `None` (after saying so) when etcd is not installed.
    fn start(test: &str) -> Option<Etcd> {
        if !std::path::Path::new(ETCD).exists() {
            eprintln!(
                "skipped {test}: needs {ETCD} (Debian's etcd-server; scripts/lib.sh installs it)"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("vswitch-etcd-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Etcd {
            child: None,
            dir,
            client: free_port(),
            peer: free_port(),
        };
        etcd.spawn();
        Some(etcd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Process::new(ETCD)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        // Wait until it answers a read (not merely listens).
        let deadline = StdInstant::now() + Duration::from_secs(20);
        loop {
            if Raw::try_connect(&self.url()).is_some() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited ({status}): {}", self.log());
            }
            assert!(
                StdInstant::now() < deadline,
                "etcd did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL, as an outage would, by PID; the data stays.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain etcd client for the tests' own reads and writes, with a runtime
/// of its own (so it also works from a thread of the store's).
struct Raw {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Raw {
    fn try_connect(url: &str) -> Option<Raw> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let mut c = timeout(Duration::from_secs(1), Client::connect([url], None))
                .await
                .ok()?
                .ok()?;
            timeout(Duration::from_secs(1), c.get("probe", None))
                .await
                .ok()?
                .ok()?;
            Some(c)
        })?;
        Some(Raw { rt, client })
    }

    fn connect(url: &str) -> Raw {
        Raw::try_connect(url).expect("etcd answers")
    }

    fn put(&mut self, key: &str, value: &[u8]) -> i64 {
        let c = &mut self.client;
        let r = self.rt.block_on(c.put(key, value, None)).unwrap();
        r.header().unwrap().revision()
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let c = &mut self.client;
        let r = self.rt.block_on(c.get(key, None)).unwrap();
        r.kvs().first().map(|kv| kv.value().to_vec())
    }

    fn compact(&mut self, revision: i64) {
        let c = &mut self.client;
        self.rt.block_on(c.compact(revision, None)).unwrap();
    }
}

/// What a sink saw, applied as the daemon would apply it.
#[derive(Default, Debug)]
struct Seen {
    networks: BTreeMap<String, serde_json::Value>,
    mappings: BTreeMap<(u32, IpAddr), Mapping>,
    connected: bool,
    snapshots: usize,
    conflicts: Vec<(u32, IpAddr, String)>,
    /// Every event, in order.
    log: Vec<Event>,
}

impl Seen {
    /// The events since the last snapshot.
    fn since_snapshot(&self) -> &[Event] {
        let last = self
            .log
            .iter()
            .rposition(|e| matches!(e, Event::Snapshot { .. }))
            .map_or(0, |i| i + 1);
        &self.log[last..]
    }
}

#[derive(Clone, Default)]
struct View(Arc<(Mutex<Seen>, Condvar)>);

impl View {
    fn sink(&self) -> Box<dyn Fn(Event) + Send> {
        let view = self.clone();
        Box::new(move |ev| {
            let (lock, cv) = &*view.0;
            let mut s = lock.lock().unwrap();
            s.log.push(ev.clone());
            match ev {
                Event::Snapshot { networks, mappings } => {
                    s.snapshots += 1;
                    s.networks = networks.into_iter().map(|n| (n.name, n.spec)).collect();
                    s.mappings = mappings.into_iter().map(|m| ((m.vsid, m.ca), m)).collect();
                }
                Event::NetworkPut(n) => {
                    s.networks.insert(n.name, n.spec);
                }
                Event::NetworkGone(name) => {
                    s.networks.remove(&name);
                }
                Event::MappingPut(m) => {
                    s.mappings.insert((m.vsid, m.ca), m);
                }
                Event::MappingGone { vsid, ca } => {
                    s.mappings.remove(&(vsid, ca));
                }
                Event::Conflict { vsid, ca, host } => s.conflicts.push((vsid, ca, host)),
                Event::Connected(c) => s.connected = c,
            }
            cv.notify_all();
        })
    }

    /// Waits until `pred` holds; how long that took. Fails the test, with
    /// what was seen, past `within`.
    fn wait(&self, within: Duration, what: &str, pred: impl Fn(&Seen) -> bool) -> Duration {
        let start = StdInstant::now();
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().unwrap();
        while !pred(&s) {
            let left = within
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("not within {within:?}: {what}; seen {s:#?}"));
            s = cv.wait_timeout(s, left).unwrap().0;
        }
        start.elapsed()
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.0 .0.lock().unwrap())
    }
}

fn host(etcd: &Etcd, id: &str) -> (Store, View) {
    host_with(etcd, id, Hooks::default())
}

fn host_with(etcd: &Etcd, id: &str, hooks: Hooks) -> (Store, View) {
    let view = View::default();
    let cfg = StoreConfig {
        lease_ttl: TTL,
        ..StoreConfig::new(vec![etcd.url()], id)
    };
    let store = Store::start_with(cfg, view.sink(), hooks).unwrap();
    view.wait(Duration::from_secs(5), "connected", |s| s.connected);
    (store, view)
}

fn net(name: &str, vsid: u32) -> SharedNetwork {
    SharedNetwork {
        name: name.into(),
        spec: serde_json::json!({"Name": name, "Type": "overlay", "Options": {"vsid": vsid.to_string()}}),
    }
}

#[test]
fn changes_reach_the_other_host_within_a_second() {
    let Some(etcd) = Etcd::start("reach") else {
        return;
    };
    let (a, _va) = host(&etcd, "a");
    let (b, vb) = host(&etcd, "b");

    a.put_network(&net("blue", 4096)).unwrap();
    let took = vb.wait(Duration::from_secs(1), "network on b", |s| {
        s.networks.contains_key("blue")
    });
    eprintln!("network reached b in {took:?}");

    let m = mapping("a", 4096, v4(2));
    let start = StdInstant::now();
    assert_eq!(a.claim(&m), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "mapping on b", |s| {
        s.mappings.get(&(4096, v4(2))) == Some(&m)
    });
    let took = start.elapsed();
    eprintln!("mapping reached b in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // An IPv6 customer address, and a change of MAC on the same address.
    let m6 = mapping("a", 4096, "fd00::2".parse().unwrap());
    assert_eq!(a.claim(&m6), Ok(Claim::Granted));
    let moved = Mapping {
        mac: [2, 0, 0, 0, 0, 9],
        ..m.clone()
    };
    assert_eq!(a.claim(&moved), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "new MAC and v6 on b", |s| {
        s.mappings.get(&(4096, v4(2))) == Some(&moved) && s.mappings.contains_key(&(4096, m6.ca))
    });

    // The other host hears of removals too.
    a.release(4096, v4(2)).unwrap();
    a.delete_network("blue").unwrap();
    vb.wait(Duration::from_secs(1), "removals on b", |s| {
        !s.mappings.contains_key(&(4096, v4(2))) && !s.networks.contains_key("blue")
    });
    // Only one snapshot each: watched, not re-read.
    assert_eq!(vb.with(|s| s.snapshots), 1);
    drop((a, b));
}

#[test]
fn racing_claims_end_with_one_granted_one_taken() {
    let Some(etcd) = Etcd::start("race") else {
        return;
    };
    let (a, _) = host(&etcd, "a");
    let (b, _) = host(&etcd, "b");
    let rounds = 20u8;
    let barrier = Barrier::new(2);
    let race = |store: &Store, id: &str| {
        let mut results = Vec::new();
        for i in 0..rounds {
            barrier.wait();
            results.push(store.claim(&mapping(id, 7, v4(100 + i))));
        }
        results
    };
    let (ra, rb) = std::thread::scope(|scope| {
        let (race, a, b) = (&race, &a, &b);
        let ta = scope.spawn(move || race(a, "a"));
        let tb = scope.spawn(move || race(b, "b"));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut raw = Raw::connect(&etcd.url());
    for i in 0..rounds as usize {
        let owner = owner_of(&raw.get(&mapping_key(P, 7, v4(100 + i as u8))).unwrap()).unwrap();
        match (&ra[i], &rb[i]) {
            (Ok(Claim::Granted), Err(StoreError::Taken { host })) => {
                assert_eq!((host.as_str(), owner.as_str()), ("a", "a"))
            }
            (Err(StoreError::Taken { host }), Ok(Claim::Granted)) => {
                assert_eq!((host.as_str(), owner.as_str()), ("b", "b"))
            }
            other => panic!("round {i}: {other:?}"),
        }
    }
    // Claiming again what one holds is granted again; the loser stays out.
    assert_eq!(a.claim(&mapping("a", 7, v4(1))), Ok(Claim::Granted));
    assert_eq!(a.claim(&mapping("a", 7, v4(1))), Ok(Claim::Granted));
    assert_eq!(
        b.claim(&mapping("b", 7, v4(1))),
        Err(StoreError::Taken { host: "a".into() })
    );
}

#[test]
fn release_deletes_only_what_is_ours() {
    let Some(etcd) = Etcd::start("release") else {
        return;
    };
    let (a, va) = host(&etcd, "a");
    let (b, _) = host(&etcd, "b");
    assert_eq!(a.claim(&mapping("a", 9, v4(3))), Ok(Claim::Granted));
    b.release(9, v4(3)).unwrap();
    let mut raw = Raw::connect(&etcd.url());
    assert!(
        raw.get(&mapping_key(P, 9, v4(3))).is_some(),
        "b released a's claim"
    );
    a.release(9, v4(3)).unwrap();
    assert!(raw.get(&mapping_key(P, 9, v4(3))).is_none());
    va.wait(Duration::from_secs(1), "gone on a", |s| {
        s.mappings.is_empty()
    });
    // Released, it is free for the other host.
    assert_eq!(b.claim(&mapping("b", 9, v4(3))), Ok(Claim::Granted));

    // A record deleted behind its owner's back is claimed again.
    let c = &mut raw.client;
    raw.rt
        .block_on(c.delete(mapping_key(P, 9, v4(3)), None))
        .unwrap();
    va.wait(Duration::from_secs(1), "deleted, then back", |s| {
        s.mappings.get(&(9, v4(3))).is_some_and(|m| m.host == "b")
    });
    assert!(b.connected());
}

#[test]
fn a_crashed_host_leaves_after_its_lease_a_stopped_one_at_once() {
    let Some(etcd) = Etcd::start("lease") else {
        return;
    };
    let (a, _) = host(&etcd, "a");
    let (c, _) = host(&etcd, "c");
    let (b, vb) = host(&etcd, "b");
    a.put_network(&net("blue", 5)).unwrap();
    assert_eq!(a.claim(&mapping("a", 5, v4(1))), Ok(Claim::Granted));
    assert_eq!(c.claim(&mapping("c", 5, v4(2))), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "both on b", |s| {
        s.mappings.len() == 2
    });

    // A crash: no revoke, the keepalives just stop.
    let crashed = StdInstant::now();
    a.abandon();
    std::thread::sleep(TTL / 2);
    assert!(
        vb.with(|s| s.mappings.contains_key(&(5, v4(1)))),
        "a's mapping went before its lease expired"
    );
    vb.wait(TTL * 3, "a's mapping expired", |s| {
        !s.mappings.contains_key(&(5, v4(1)))
    });
    eprintln!(
        "crashed host's mapping gone after {:?} (lease {TTL:?})",
        crashed.elapsed()
    );
    // Networks are not on the lease: they outlive the host.
    assert!(vb.with(|s| s.networks.contains_key("blue")));

    // A clean stop revokes: gone at once.
    let stopped = StdInstant::now();
    c.stop();
    vb.wait(Duration::from_secs(1), "c's mapping gone", |s| {
        s.mappings.is_empty()
    });
    eprintln!("stopped host's mapping gone after {:?}", stopped.elapsed());
    drop(b);
}

#[test]
fn an_etcd_outage_queues_changes_and_catches_up() {
    let Some(mut etcd) = Etcd::start("outage") else {
        return;
    };
    let (a, va) = host(&etcd, "a");
    let (b, vb) = host(&etcd, "b");
    assert_eq!(a.claim(&mapping("a", 6, v4(1))), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "a's mapping on b", |s| {
        s.mappings.len() == 1
    });

    etcd.kill();
    vb.wait(Duration::from_secs(5), "b disconnected", |s| !s.connected);
    va.wait(Duration::from_secs(5), "a disconnected", |s| !s.connected);
    assert!(!b.connected());

    // Calls return at once, queued; nothing hangs.
    let start = StdInstant::now();
    assert_eq!(b.claim(&mapping("b", 6, v4(2))), Ok(Claim::Queued));
    b.put_network(&net("green", 6)).unwrap();
    assert_eq!(b.claim(&mapping("b", 6, v4(3))), Ok(Claim::Queued));
    b.release(6, v4(3)).unwrap();
    let took = start.elapsed();
    assert!(took < CALL_DEADLINE, "calls with etcd down took {took:?}");
    // What the hosts knew is kept meanwhile.
    assert_eq!(vb.with(|s| s.mappings.len()), 1);

    etcd.restart();
    let start = StdInstant::now();
    va.wait(Duration::from_secs(8), "b's queued changes on a", |s| {
        s.connected
            && s.mappings.contains_key(&(6, v4(2)))
            && s.networks.contains_key("green")
            && !s.mappings.contains_key(&(6, v4(3)))
    });
    vb.wait(Duration::from_secs(8), "b back", |s| {
        s.connected && s.mappings.len() == 2 && s.networks.contains_key("green")
    });
    eprintln!("caught up {:?} after etcd came back", start.elapsed());
    assert!(a.connected() && b.connected());
    // a's lease survived the restart, or was renewed and its claim made again.
    assert!(vb.with(|s| s.mappings.contains_key(&(6, v4(1)))));
    // Resync then watch: a later change still arrives.
    assert_eq!(a.claim(&mapping("a", 6, v4(4))), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "a later change on b", |s| {
        s.mappings.contains_key(&(6, v4(4)))
    });
}

#[test]
fn queued_claims_that_collide_end_with_one_conflict() {
    let Some(mut etcd) = Etcd::start("conflict") else {
        return;
    };
    let (a, va) = host(&etcd, "a");
    let (b, vb) = host(&etcd, "b");
    etcd.kill();
    va.wait(Duration::from_secs(5), "a disconnected", |s| !s.connected);
    vb.wait(Duration::from_secs(5), "b disconnected", |s| !s.connected);
    assert_eq!(a.claim(&mapping("a", 8, v4(1))), Ok(Claim::Queued));
    assert_eq!(b.claim(&mapping("b", 8, v4(1))), Ok(Claim::Queued));
    etcd.restart();
    for v in [&va, &vb] {
        v.wait(Duration::from_secs(8), "back and the address known", |s| {
            s.connected && s.mappings.contains_key(&(8, v4(1)))
        });
    }
    let owner = owner_of(
        &Raw::connect(&etcd.url())
            .get(&mapping_key(P, 8, v4(1)))
            .unwrap(),
    )
    .unwrap();
    let (winner, loser) = if owner == "a" { (&va, &vb) } else { (&vb, &va) };
    let lost_to = owner.clone();
    loser.wait(Duration::from_secs(1), "the loser told", |s| {
        s.conflicts == vec![(8, v4(1), lost_to.clone())]
    });
    assert!(winner.with(|s| s.conflicts.is_empty()));
    // The loser dropped its claim: it does not come back on the next resync.
    let (lose, win) = if owner == "a" { (&b, &a) } else { (&a, &b) };
    assert!(!lose.shared.lock().mappings.contains_key(&(8, v4(1))));
    assert!(win.shared.lock().mappings.contains_key(&(8, v4(1))));
}

#[test]
fn a_compacted_watch_takes_a_new_snapshot() {
    let Some(etcd) = Etcd::start("compact") else {
        return;
    };
    let url = etcd.url();
    // A record of a host that is not running (so nobody claims it again).
    Raw::connect(&url).put(
        &mapping_key(P, 3, v4(9)),
        &encode_mapping(&mapping("z", 3, v4(9))),
    );
    let (a, _) = host(&etcd, "a");
    assert_eq!(a.claim(&mapping("a", 3, v4(1))), Ok(Claim::Granted));
    // Between b's snapshot and its watch, z's mapping goes, a network comes,
    // and the history is compacted past the snapshot: the watch cannot start
    // there.
    let hooks = Hooks {
        before_watch: Some(Box::new(move |_revision| {
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&url);
                raw.put(&network_key(P, "late"), &encode_network(&net("late", 3)));
                let c = &mut raw.client;
                let del = raw
                    .rt
                    .block_on(c.delete(mapping_key(P, 3, v4(9)), None))
                    .unwrap();
                raw.compact(del.header().unwrap().revision());
            })
            .join()
            .unwrap();
        })),
    };
    let (_b, vb) = host_with(&etcd, "b", hooks);
    vb.wait(
        Duration::from_secs(3),
        "second snapshot with the change",
        |s| {
            s.snapshots == 2
                && s.networks.contains_key("late")
                && s.mappings.keys().collect::<Vec<_>>() == [&(3, v4(1))]
        },
    );
    drop(a);
}

#[test]
fn records_this_version_does_not_understand_are_skipped() {
    let Some(etcd) = Etcd::start("skip") else {
        return;
    };
    let mut raw = Raw::connect(&etcd.url());
    raw.put("/vswitch/v1/mappings/1/10.0.0.1", b"garbage");
    raw.put("/vswitch/v1/hosts/x", b"{}");
    raw.put("/vswitch/v1/networks/old", br#"{"v":2,"name":"old"}"#);
    raw.put("/vswitch/v2/networks/new", br#"{"v":2,"name":"new"}"#);
    raw.put("/vswitch/v1/networks/ok", &encode_network(&net("ok", 1)));
    let (a, va) = host(&etcd, "a");
    va.with(|s| {
        assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["ok"]);
        assert!(s.mappings.is_empty());
    });
    // The same, arriving over the watch.
    raw.put("/vswitch/v1/mappings/1/10.0.0.2", b"{\"v\":1}");
    raw.put(
        "/vswitch/v1/mappings/1/010.0.0.2",
        &encode_mapping(&mapping("z", 1, v4(2))),
    );
    raw.put(
        "/vswitch/v1/mappings/1/10.0.0.3",
        &encode_mapping(&mapping("z", 1, v4(3))),
    );
    va.wait(Duration::from_secs(1), "the good one", |s| {
        s.mappings.len() == 1
    });
    assert!(a.connected());
    // An unreadable record on an address is not taken over.
    assert_eq!(
        a.claim(&mapping("a", 1, v4(1))),
        Err(StoreError::Taken {
            host: "(unreadable record)".into()
        })
    );
}

#[test]
fn starting_with_etcd_down_returns_at_once_and_publishes_later() {
    let Some(mut etcd) = Etcd::start("late") else {
        return;
    };
    etcd.kill();
    let view = View::default();
    let cfg = StoreConfig {
        lease_ttl: TTL,
        ..StoreConfig::new(vec![etcd.url()], "a")
    };
    let start = StdInstant::now();
    let a = Store::start(cfg, view.sink()).unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert!(!a.connected());
    assert_eq!(a.claim(&mapping("a", 2, v4(1))), Ok(Claim::Queued));
    a.put_network(&net("blue", 2)).unwrap();
    assert!(start.elapsed() < CALL_DEADLINE);
    etcd.spawn();
    view.wait(Duration::from_secs(8), "published once etcd is up", |s| {
        s.connected && s.mappings.len() == 1 && s.networks.contains_key("blue")
    });
    // Stopping is quick whatever the state.
    let start = StdInstant::now();
    a.stop();
    assert!(start.elapsed() < CALL_DEADLINE);
}

#[test]
fn a_lost_lease_is_renewed_and_the_mappings_claimed_again() {
    let Some(etcd) = Etcd::start("renew") else {
        return;
    };
    let (a, va) = host(&etcd, "a");
    let (_b, vb) = host(&etcd, "b");
    assert_eq!(a.claim(&mapping("a", 4, v4(1))), Ok(Claim::Granted));
    assert_eq!(a.claim(&mapping("a", 4, v4(2))), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "a's mappings on b", |s| {
        s.mappings.len() == 2
    });
    // The lease goes (as if it had expired while a was cut off).
    let mut raw = Raw::connect(&etcd.url());
    let c = &mut raw.client;
    let got = raw
        .rt
        .block_on(c.get(mapping_key(P, 4, v4(1)), None))
        .unwrap();
    let lease = got.kvs()[0].lease();
    let c = &mut raw.client;
    raw.rt.block_on(c.lease_revoke(lease)).unwrap();
    vb.wait(Duration::from_secs(1), "gone with the lease", |s| {
        s.mappings.is_empty()
    });
    let start = StdInstant::now();
    vb.wait(
        Duration::from_secs(5),
        "claimed again on a new lease",
        |s| s.mappings.len() == 2,
    );
    eprintln!("claimed again {:?} after the lease went", start.elapsed());
    va.wait(Duration::from_secs(2), "a in sync", |s| {
        s.connected && s.mappings.len() == 2
    });
    let c = &mut raw.client;
    let got = raw
        .rt
        .block_on(c.get(mapping_key(P, 4, v4(2)), None))
        .unwrap();
    assert_ne!(got.kvs()[0].lease(), lease);
}

/// A TCP relay in front of etcd that can cut one host off (its connections
/// reset, new ones refused) while the others still reach etcd.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            cut: Arc::default(),
            stop: Arc::default(),
            conns: Arc::default(),
        };
        let (cut, stop, conns) = (relay.cut.clone(), relay.stop.clone(), relay.conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                for (from, to) in [(&inbound, &outbound), (&outbound, &inbound)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                list.push(inbound);
                list.push(outbound);
            }
        });
        relay
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn a_host_cut_off_catches_up_and_claims_again() {
    let Some(etcd) = Etcd::start("cutoff") else {
        return;
    };
    let relay = Relay::start(etcd.client);
    let va = View::default();
    let cfg = StoreConfig {
        lease_ttl: TTL,
        ..StoreConfig::new(vec![relay.url()], "a")
    };
    let a = Store::start(cfg, va.sink()).unwrap();
    va.wait(Duration::from_secs(5), "a connected", |s| s.connected);
    let (b, vb) = host(&etcd, "b");
    assert_eq!(a.claim(&mapping("a", 2, v4(1))), Ok(Claim::Granted));
    vb.wait(Duration::from_secs(1), "a's mapping on b", |s| {
        s.mappings.contains_key(&(2, v4(1)))
    });

    relay.cut();
    va.wait(Duration::from_secs(5), "a cut off", |s| !s.connected);
    // While a is away: its lease expires on etcd, b changes things, a
    // queues a claim of its own.
    vb.wait(TTL * 3, "a's mapping expired", |s| {
        !s.mappings.contains_key(&(2, v4(1)))
    });
    b.put_network(&net("red", 2)).unwrap();
    assert_eq!(b.claim(&mapping("b", 2, v4(2))), Ok(Claim::Granted));
    assert_eq!(a.claim(&mapping("a", 2, v4(3))), Ok(Claim::Queued));
    assert_eq!(va.with(|s| s.mappings.len()), 1, "a keeps what it knew");

    relay.heal();
    let start = StdInstant::now();
    va.wait(Duration::from_secs(5), "b's changes on a", |s| {
        s.connected && s.networks.contains_key("red") && s.mappings.len() == 3
    });
    vb.wait(Duration::from_secs(2), "a's mappings back on b", |s| {
        s.mappings.contains_key(&(2, v4(1))) && s.mappings.contains_key(&(2, v4(3)))
    });
    eprintln!(
        "cut-off host caught up {:?} after the relay healed",
        start.elapsed()
    );
    assert_eq!(va.with(|s| s.snapshots), 2);
    // What the snapshot brought does not come again over the watch (it
    // starts after the snapshot's revision).
    va.with(|s| {
        for e in s.since_snapshot() {
            assert!(
                !matches!(e, Event::NetworkPut(n) if n.name == "red")
                    && !matches!(e, Event::MappingPut(m) if m.host == "b"),
                "{e:?} seen twice"
            );
        }
    });
}
