//! The side-by-side harness: boots Debian's kernel and the test initramfs under Gantry's
//! JIT and, when `qemu-system-x86_64` is installed, under QEMU TCG with the same kernel,
//! initrd and command line, in turn (Gantry, QEMU, Gantry, ...), and prints a table of
//! median wall times and their ratio. With `--workloads` it also runs commands inside the
//! guest (through the initramfs's `gantry_cmd`), timed by the guest itself, beside the same
//! commands run natively on this host. With `--disks` it times the guest's sequential
//! writes and reads of a raw image on its IDE disk and on a virtio-blk disk (the disk
//! initramfs loads the drivers), beside the host's own `dd` on the same file.
//!
//! `cargo run --release -p gantry-bench --bin gantry-bench -- --help`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Boots the Debian guest under Gantry and QEMU TCG in turn and compares")]
struct Args {
    /// Runs of each command (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// The gantry binary (default: the one beside this program).
    #[arg(long)]
    gantry: Option<PathBuf>,
    /// The QEMU binary (default: qemu-system-x86_64 on PATH; without one, Gantry alone).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// The guest kernel and initramfs (roms/fetch-debian-guest.sh fetches them).
    #[arg(long, default_value = "roms/guests/vmlinuz")]
    kernel: PathBuf,
    #[arg(long, default_value = "roms/guests/initramfs.cpio.gz")]
    initrd: PathBuf,
    /// Also time workloads inside the guest, and natively on this host.
    #[arg(long)]
    workloads: bool,
    /// Also time the guest's disk throughput (IDE and virtio-blk, a raw image), and the
    /// host's.
    #[arg(long)]
    disks: bool,
    #[arg(long, default_value = "roms/guests/initramfs-disk.cpio.gz")]
    disk_initrd: PathBuf,
}

/// The kernel command line both emulators get: the 8259s only, as for the figures before
/// Gantry had APICs, so that figures compare across versions (README has the APIC boot
/// beside it: the same time within the noise).
const CMDLINE: &str = "console=ttyS0 nolapic noapic";

/// Disk workloads on an image of [`DISK_MIB`] MiB: a name, the interface the disk is on
/// (`if=` for both emulators) and its device in the guest, whether it writes, and the
/// host's own command on the image file.
const DISK_MIB: u64 = 64;
const DISK_WORKLOADS: [(&str, &str, &str, bool); 4] = [
    ("IDE write 16 MiB (dd, fsync)", "ide", "/dev/sda", true),
    ("IDE read 16 MiB (dd)", "ide", "/dev/sda", false),
    (
        "virtio write 16 MiB (dd, fsync)",
        "virtio",
        "/dev/vda",
        true,
    ),
    ("virtio read 16 MiB (dd)", "virtio", "/dev/vda", false),
];
const HOST_WRITE: &str =
    "dd if=/dev/zero of=IMAGE bs=1048576 count=16 conv=fsync,notrunc 2>/dev/null";
const HOST_READ: &str = "dd if=IMAGE of=/dev/null bs=1048576 count=16 iflag=direct 2>/dev/null";

/// In-guest workloads: a name, and a shell command that prepares its input and then runs
/// the timed command under `time` (busybox's applet in the guest, which prints `real`).
const WORKLOADS: [(&str, &str, &str); 3] = [
    (
        "gzip -9, 3 MB of seq output",
        "seq 1 450000 > /tmp/in",
        "gzip -9 < /tmp/in > /dev/null",
    ),
    (
        "md5sum, 64 MiB of zeros",
        "dd if=/dev/zero of=/tmp/in bs=1048576 count=64 2>/dev/null",
        "md5sum /tmp/in",
    ),
    (
        "sha256sum, 32 MiB of zeros",
        "dd if=/dev/zero of=/tmp/in bs=1048576 count=32 2>/dev/null",
        "sha256sum /tmp/in",
    ),
];

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("gantry-bench: {e}");
        std::process::exit(2);
    }
}

fn run(args: &Args) -> Result<(), String> {
    for f in [&args.kernel, &args.initrd] {
        if !f.is_file() {
            return Err(format!(
                "{} is missing: run roms/fetch-debian-guest.sh first",
                f.display()
            ));
        }
    }
    let gantry = match &args.gantry {
        Some(g) => g.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("gantry"),
    };
    if !gantry.is_file() {
        return Err(format!(
            "no gantry binary at {}: build it (cargo build --release) or give --gantry",
            gantry.display()
        ));
    }
    let qemu = Command::new(&args.qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(args.qemu.as_str());
    if qemu.is_none() {
        eprintln!(
            "gantry-bench: {} not found (Debian's qemu-system-x86 package): Gantry alone",
            args.qemu
        );
    }
    let guest = Guest {
        gantry: &gantry,
        qemu,
        kernel: &args.kernel,
        initrd: &args.initrd,
        drive: None,
    };
    let mut rows = vec![(
        "boot to power-off".to_string(),
        guest.compare(None, args.runs)?,
        None,
    )];
    if args.workloads {
        for (name, prepare, timed) in WORKLOADS {
            let cmd = format!("{prepare}; time {timed}");
            let times = guest.compare(Some(&cmd), args.runs)?;
            let native = native(prepare, timed, args.runs)?;
            rows.push((name.to_string(), times, Some(native)));
        }
    }
    if args.disks {
        if !args.disk_initrd.is_file() {
            return Err(format!(
                "{} is missing: run roms/fetch-debian-guest.sh first",
                args.disk_initrd.display()
            ));
        }
        let dir = std::env::temp_dir().join(format!("gantry-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let image = dir.join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(DISK_MIB << 20).map_err(|e| e.to_string())?;
        for (name, interface, dev, write) in DISK_WORKLOADS {
            let disk_guest = Guest {
                initrd: &args.disk_initrd,
                drive: Some((&image, interface)),
                ..guest
            };
            // The driver finds the disk after its module loads.
            let prepare = format!(
                "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -b {dev} ] && break; sleep 0.2; done"
            );
            let timed = if write {
                format!("dd if=/dev/zero of={dev} bs=1048576 count=16 conv=fsync")
            } else {
                format!("dd if={dev} of=/dev/null bs=1048576 count=16")
            };
            let cmd = format!("{prepare}; time {timed}");
            let times = disk_guest.compare(Some(&cmd), args.runs)?;
            let host = if write { HOST_WRITE } else { HOST_READ };
            let host = host.replace("IMAGE", &image.to_string_lossy());
            let native = native("true", &host, args.runs)?;
            rows.push((name.to_string(), times, Some(native)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_table(&rows, qemu.is_some());
    Ok(())
}

#[derive(Clone, Copy)]
struct Guest<'a> {
    gantry: &'a Path,
    qemu: Option<&'a str>,
    kernel: &'a Path,
    initrd: &'a Path,
    /// A raw image and the interface it is on (`ide`: the primary master; `virtio`).
    drive: Option<(&'a Path, &'a str)>,
}

/// Median seconds on Gantry and (if present) QEMU.
type Pair = (f64, Option<f64>);

impl Guest<'_> {
    /// Runs the guest `runs` times on each emulator, in turn; with `cmd`, the seconds the
    /// guest's `time` reported, else the whole process's wall time.
    fn compare(&self, cmd: Option<&str>, runs: u32) -> Result<Pair, String> {
        let append = match cmd {
            Some(c) => format!("{CMDLINE} gantry_cmd=\"{c}\""),
            None => CMDLINE.to_string(),
        };
        let (mut g, mut q) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            g.push(self.once(self.gantry_cmd(&append), cmd.is_some())?);
            if let Some(qemu) = self.qemu {
                q.push(self.once(self.qemu_cmd(qemu, &append), cmd.is_some())?);
            }
        }
        Ok((median(g), (!q.is_empty()).then(|| median(q))))
    }

    fn gantry_cmd(&self, append: &str) -> Command {
        let mut c = Command::new(self.gantry);
        c.args([
            "run", "--accel", "jit", "--mem", "256M", "--serial", "stdio",
        ])
        .arg("--kernel")
        .arg(self.kernel)
        .arg("--initrd")
        .arg(self.initrd)
        .args(["--append", append]);
        if let Some((d, interface)) = self.drive {
            c.arg("--drive")
                .arg(format!("file={},if={interface},format=raw", d.display()));
        }
        c
    }

    fn qemu_cmd(&self, qemu: &str, append: &str) -> Command {
        let mut c = Command::new(qemu);
        c.args([
            "-M", "pc", "-accel", "tcg", "-m", "256M", "-display", "none",
        ])
        .args([
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-kernel",
        ])
        .arg(self.kernel)
        .arg("-initrd")
        .arg(self.initrd)
        .args(["-append", append]);
        if let Some((d, interface)) = self.drive {
            c.arg("-drive")
                .arg(format!("file={},if={interface},format=raw", d.display()));
        }
        c
    }

    /// One run: its wall time, or with `timed` the guest's own `real` figure.
    fn once(&self, mut c: Command, timed: bool) -> Result<f64, String> {
        let name = format!("{c:?}");
        let start = Instant::now();
        let out = c
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| format!("{name}: {e}"))?;
        let wall = start.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("GANTRY-GUEST: powering off") {
            return Err(format!(
                "{name}: the guest did not reach power-off (exit {:?})",
                out.status.code()
            ));
        }
        if !timed {
            return Ok(wall);
        }
        real_seconds(&text).ok_or_else(|| format!("{name}: no `real` time in the guest's output"))
    }
}

/// The seconds in busybox `time`'s `real` line ("real\t0m 1.23s" or "real 1.23").
fn real_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("real"))?;
    let t = line.trim_start().trim_start_matches("real").trim();
    let t = t.trim_end_matches('s');
    match t.split_once('m') {
        Some((m, s)) => Some(m.trim().parse::<f64>().ok()? * 60.0 + s.trim().parse::<f64>().ok()?),
        None => t.parse().ok(),
    }
}

/// The same workload on this host: `prepare` once per run, `timed` timed by wall clock.
fn native(prepare: &str, timed: &str, runs: u32) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("gantry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let fix = |s: &str| s.replace("/tmp/in", &dir.join("in").to_string_lossy());
    let mut t = Vec::new();
    for _ in 0..runs {
        sh(&fix(prepare))?;
        let start = Instant::now();
        sh(&fix(timed))?;
        t.push(start.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(median(t))
}

fn sh(cmd: &str) -> Result<(), String> {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?
        .success();
    ok.then_some(())
        .ok_or_else(|| format!("`{cmd}` failed on the host"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_table(rows: &[(String, Pair, Option<f64>)], qemu: bool) {
    let mut head = format!("{:<30} {:>11}", "workload", "gantry s");
    if qemu {
        head += &format!(" {:>11} {:>13}", "qemu tcg s", "gantry/qemu");
    }
    head += &format!(" {:>11} {:>14}", "native s", "gantry/native");
    if qemu {
        head += &format!(" {:>12}", "qemu/native");
    }
    println!("{head}");
    for (name, (g, q), n) in rows {
        let mut line = format!("{name:<30} {g:>11.2}");
        if qemu {
            match q {
                Some(q) => line += &format!(" {q:>11.2} {:>12.2}x", g / q),
                None => line += &format!(" {:>11} {:>13}", "-", "-"),
            }
        }
        match n {
            Some(n) => line += &format!(" {n:>11.3} {:>13.1}x", g / n),
            None => line += &format!(" {:>11} {:>14}", "-", "-"),
        }
        if qemu {
            match (q, n) {
                (Some(q), Some(n)) => line += &format!(" {:>11.1}x", q / n),
                _ => line += &format!(" {:>12}", "-"),
            }
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_and_posix_time_formats_read() {
        assert_eq!(real_seconds("x\nreal\t0m 1.25s\nuser 0m 1.00s"), Some(1.25));
        assert_eq!(real_seconds("real 2m 0.50s"), Some(120.5));
        assert_eq!(real_seconds("real 3.5"), Some(3.5));
        assert_eq!(real_seconds("no time here"), None);
    }
}
