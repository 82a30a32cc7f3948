//! Compiles the XDP programs in `xdp-prog/` with clang (`-target bpf`) into
//! OUT_DIR, where `src/ebpf` embeds them with `include_bytes_aligned!`.
//!
//! Needs clang and the libbpf headers (`bpf/bpf_helpers.h`, Debian package
//! `libbpf-dev`); `CLANG` overrides the compiler. Rust eBPF is not an option:
//! it needs a nightly rust-src and bpf-linker.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Objects to build: output stem, source stem in `xdp-prog/`, extra clang
/// flags. The uplink program is built three times: plainly (loaded by aya),
/// device-bound with the VLAN metadata kfunc (loaded by `src/ebpf/devbound.rs`),
/// and as TC programs for the uplink's tcx ingress and its punt TAP.
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("uplink", "uplink", &[]),
    ("uplink_devbound", "uplink", &["-DUPLINK_DEV_BOUND"]),
    ("uplink_tc", "uplink", &["-DUPLINK_TC"]),
    ("fastpath", "fastpath", &[]),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src_dir = manifest.join("../xdp-prog");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", src_dir.display());

    // clang -target bpf does not look in the multiarch include directory,
    // where Debian keeps <asm/types.h>.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = PathBuf::from(format!("/usr/include/{arch}-linux-gnu"));

    for (name, source, flags) in PROGRAMS {
        let src = src_dir.join(format!("{source}.bpf.c"));
        let obj = out_dir.join(format!("{name}.bpf.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&clang, &src_dir, &multiarch, flags, &src, &obj);
    }
    if let Ok(entries) = std::fs::read_dir(&src_dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "h") {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }
}

fn compile(clang: &str, include: &Path, multiarch: &Path, flags: &[&str], src: &Path, obj: &Path) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .args(flags)
        .arg("-I")
        .arg(include);
    if multiarch.is_dir() {
        cmd.arg("-idirafter").arg(multiarch);
    }
    cmd.arg("-c").arg(src).arg("-o").arg(obj);

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "\n\nvswitch needs clang to compile its XDP programs ({}), and `{clang}` was not \
             found.\nInstall it (Debian: apt-get install clang libbpf-dev) or set CLANG to \
             its path.\n\n",
            src.display()
        ),
        Err(e) => panic!("running `{clang}` to compile {}: {e}", src.display()),
    };
    if !output.status.success() {
        panic!(
            "\n\n`{clang}` failed to compile {} ({}).\nIf <bpf/bpf_helpers.h> is missing, \
             install libbpf-dev.\n{}\n",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
