//! Disk drives as a user gives them, in QEMU's words: `--drive file=PATH[,if=ide|virtio]
//! [,format=raw][,readonly=on][,cache=writeback|none|unsafe][,index=N]`, `--hda`, `--hdb`;
//! and their images opened once for the whole run (across guest resets), each locked as
//! QEMU locks it, so that two processes never write one image.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;

use gantry_devices::block::{Cache, Image, RawImage, SharedImage, SnapshotImage};

/// The IDE positions: primary master and slave, secondary master and slave.
pub const IDE_SLOTS: usize = 4;
/// virtio-blk drives: one PCI slot each, from [`FIRST_VIRTIO_SLOT`] on.
pub const VIRTIO_SLOTS: usize = 8;
pub const FIRST_VIRTIO_SLOT: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Ide,
    Virtio,
}

impl Interface {
    pub fn positions(self) -> usize {
        match self {
            Interface::Ide => IDE_SLOTS,
            Interface::Virtio => VIRTIO_SLOTS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Interface::Ide => "IDE",
            Interface::Virtio => "virtio",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    pub interface: Interface,
    /// `None`: probed from the image's header.
    pub format: Option<Format>,
    pub read_only: bool,
    pub cache: Cache,
    /// The position on its interface (IDE: 0-3); `None`: the first free one.
    pub index: Option<usize>,
}

impl DriveSpec {
    /// A drive on the first free IDE position (`--hda`/`--hdb` give the index).
    pub fn ide(path: PathBuf, index: Option<usize>) -> Self {
        Self {
            path,
            interface: Interface::Ide,
            format: None,
            read_only: false,
            cache: Cache::Writeback,
            index,
        }
    }

    /// Parses `--drive`'s comma-separated `key=value` list (a comma in a path is
    /// written `,,`, as in QEMU).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = Self::ide(PathBuf::new(), None);
        let mut file = None;
        for part in split_options(s) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            match key {
                "file" => file = Some(PathBuf::from(value)),
                "if" => {
                    spec.interface = match value {
                        "ide" => Interface::Ide,
                        "virtio" => Interface::Virtio,
                        _ => return Err(format!("if={value}: the interfaces are ide and virtio")),
                    }
                }
                "format" => {
                    spec.format = Some(match value {
                        "raw" => Format::Raw,
                        "qcow2" => Format::Qcow2,
                        _ => return Err(format!("format={value}: the formats are raw and qcow2")),
                    })
                }
                "readonly" => {
                    spec.read_only = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("readonly={value}: on or off")),
                    }
                }
                "cache" => {
                    spec.cache = match value {
                        "writeback" => Cache::Writeback,
                        "none" => Cache::None,
                        "unsafe" => Cache::Unsafe,
                        _ => return Err(format!("cache={value}: writeback, none or unsafe")),
                    }
                }
                "index" => {
                    let i: usize = value
                        .parse()
                        .map_err(|_| format!("index={value}: not a number"))?;
                    spec.index = Some(i);
                }
                _ => return Err(format!("'{key}' is not a drive option")),
            }
        }
        let last = spec.interface.positions() - 1;
        if let Some(i) = spec.index.filter(|i| *i > last) {
            return Err(format!(
                "index={i}: 0 to {last} for if={}",
                spec.interface.name().to_lowercase()
            ));
        }
        spec.path = file.ok_or("no file=PATH")?;
        Ok(spec)
    }
}

/// `a,b=c,,d` -> `a`, `b=c,d`.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("drive {path}: {why}")]
    Open { path: String, why: String },
    #[error("drive {path}: {interface} position {index} is taken by another drive")]
    Taken {
        path: String,
        interface: &'static str,
        index: usize,
    },
    #[error("drive {path}: no free {interface} position (there are {count})")]
    Full {
        path: String,
        interface: &'static str,
        count: usize,
    },
}

/// A drive's image, opened, and where it sits.
pub struct OpenDrive {
    pub spec: DriveSpec,
    pub image: SharedImage,
    pub format: &'static str,
}

/// The IDE positions' images, in order (primary master, slave, secondary master, slave).
pub type IdeImages = [Option<SharedImage>; IDE_SLOTS];

/// Opens every drive and gives each its position; with `snapshot` (`--snapshot`), each
/// image is only read, and the guest's writes go to a temporary overlay dropped at exit.
pub fn open_all(specs: &[DriveSpec], snapshot: bool) -> Result<Vec<OpenDrive>, DriveError> {
    let mut taken_ide = [false; IDE_SLOTS];
    let mut taken_virtio = [false; VIRTIO_SLOTS];
    let mut placed: Vec<DriveSpec> = Vec::new();
    // Explicit positions first, then the others in order into the free ones.
    for s in specs.iter().filter(|s| s.index.is_some()) {
        let i = s.index.unwrap_or_default();
        let taken: &mut [bool] = match s.interface {
            Interface::Ide => &mut taken_ide,
            Interface::Virtio => &mut taken_virtio,
        };
        let slot = taken.get_mut(i);
        if slot.is_none_or(|t| std::mem::replace(t, true)) {
            return Err(DriveError::Taken {
                path: s.path.display().to_string(),
                interface: s.interface.name(),
                index: i,
            });
        }
        placed.push(s.clone());
    }
    for s in specs.iter().filter(|s| s.index.is_none()) {
        let t: &mut [bool] = match s.interface {
            Interface::Ide => &mut taken_ide,
            Interface::Virtio => &mut taken_virtio,
        };
        let i = t.iter().position(|t| !t).ok_or_else(|| DriveError::Full {
            path: s.path.display().to_string(),
            interface: s.interface.name(),
            count: s.interface.positions(),
        })?;
        t[i] = true;
        placed.push(DriveSpec {
            index: Some(i),
            ..s.clone()
        });
    }
    placed.into_iter().map(|s| open(s, snapshot)).collect()
}

/// A temporary file nobody else can reach: created in the temporary directory and
/// unlinked at once.
fn anonymous_file() -> std::io::Result<std::fs::File> {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("gantry-snapshot-{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

fn open(spec: DriveSpec, snapshot: bool) -> Result<OpenDrive, DriveError> {
    let fail = |why: String| DriveError::Open {
        path: spec.path.display().to_string(),
        why,
    };
    // Under --snapshot the image is only read (and locked as a reader).
    let read_only = spec.read_only || snapshot;
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(&spec.path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    // As QEMU: a writer excludes everyone, readers exclude writers. The lock goes with
    // the file when the run ends.
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor this function owns, with no pointers involved.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        return Err(fail(
            "is in use by another process (it holds a lock on the image)".into(),
        ));
    }
    if meta.len() < 512 {
        return Err(fail(format!(
            "is {} bytes, smaller than one 512-byte sector",
            meta.len()
        )));
    }
    let mut magic = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0)
        .map_err(|e| fail(e.to_string()))?;
    let probed_qcow2 = magic == *b"QFI\xfb";
    let format = match spec.format {
        Some(Format::Qcow2) if !probed_qcow2 => {
            return Err(fail("is not a qcow2 image (no QFI magic)".into()))
        }
        Some(f) => f,
        None if probed_qcow2 => Format::Qcow2,
        None => Format::Raw,
    };
    let image: Box<dyn Image> = match format {
        Format::Raw => {
            Box::new(RawImage::new(file, read_only, spec.cache).map_err(|e| fail(e.to_string()))?)
        }
        // imago opens the file (and any backing files, read-only) itself; `file` stays
        // open beside it for the lock.
        Format::Qcow2 => {
            check_qcow2_header(&file, meta.len()).map_err(|why| fail(format!("qcow2: {why}")))?;
            Box::new(
                Qcow2Image::open(&spec.path, file, read_only, spec.cache)
                    .map_err(|e| fail(format!("qcow2: {e}")))?,
            )
        }
    };
    let image: Box<dyn Image> = if snapshot && !spec.read_only {
        let overlay = anonymous_file().map_err(|e| fail(format!("--snapshot overlay: {e}")))?;
        Box::new(SnapshotImage::new(image, overlay).map_err(|e| fail(e.to_string()))?)
    } else {
        image
    };
    let format = match format {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
    };
    Ok(OpenDrive {
        spec,
        image: Rc::new(RefCell::new(image)),
        format,
    })
}

/// What a qcow2 header must say for its tables to lie in the file (imago reads them only
/// when the guest needs them; a corrupt image is an error at start, not a guest I/O
/// error later): version 2 or 3, a cluster size of 512 bytes to 2 MiB, the L1 and refcount
/// tables inside the file.
fn check_qcow2_header(file: &std::fs::File, len: u64) -> Result<(), String> {
    let mut h = [0u8; 72];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut h, 0)
        .map_err(|_| "the header is truncated".to_string())?;
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let be64 = |o: usize| u64::from(be32(o)) << 32 | u64::from(be32(o + 4));
    let version = be32(4);
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} (Gantry reads 2 and 3)"));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("cluster size 2^{cluster_bits} is out of range"));
    }
    let cluster = 1u64 << cluster_bits;
    let inside = |offset: u64, bytes: u64| offset.checked_add(bytes).is_some_and(|end| end <= len);
    let (l1_size, l1_offset) = (u64::from(be32(36)), be64(40));
    if !inside(l1_offset, l1_size * 8) {
        return Err(format!(
            "the L1 table ({l1_size} entries at {l1_offset:#x}) lies past the end of the file \
             ({len} bytes)"
        ));
    }
    let (refcount_offset, refcount_clusters) = (be64(48), u64::from(be32(56)));
    if !inside(refcount_offset, refcount_clusters * cluster) {
        return Err(format!(
            "the refcount table at {refcount_offset:#x} lies past the end of the file ({len} bytes)"
        ));
    }
    // Every L2 table and every (uncompressed) data cluster they map must lie in the file:
    // a truncated image fails here rather than as guest I/O errors.
    const OFFSET: u64 = 0x00FF_FFFF_FFFF_FE00;
    const COMPRESSED: u64 = 1 << 62;
    let read_table = |offset: u64, entries: u64| -> Result<Vec<u64>, String> {
        let mut bytes = vec![0u8; (entries * 8) as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, offset)
            .map_err(|e| format!("reading a table at {offset:#x}: {e}"))?;
        Ok(bytes
            .chunks(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    };
    for l1 in read_table(l1_offset, l1_size)? {
        let l2_offset = l1 & OFFSET;
        if l2_offset == 0 {
            continue;
        }
        if !inside(l2_offset, cluster) {
            return Err(format!(
                "an L2 table at {l2_offset:#x} lies past the end of the file ({len} bytes): \
                 the image is truncated"
            ));
        }
        for l2 in read_table(l2_offset, cluster / 8)? {
            let data = l2 & OFFSET;
            if l2 & COMPRESSED == 0 && data != 0 && !inside(data, cluster) {
                return Err(format!(
                    "a data cluster at {data:#x} lies past the end of the file ({len} bytes): \
                     the image is truncated"
                ));
            }
        }
    }
    Ok(())
}

/// A qcow2 image (versions 2 and 3: clusters allocated as the guest writes, L1/L2 tables
/// and refcounts, backing files, zero and compressed clusters) through imago, the
/// maintained Rust implementation.
struct Qcow2Image {
    access: imago::FormatAccess<imago::file::File>,
    /// Holds the image's lock (imago's own descriptor takes none).
    _locked: std::fs::File,
    read_only: bool,
    cache: Cache,
}

impl Qcow2Image {
    fn open(
        path: &std::path::Path,
        locked: std::fs::File,
        read_only: bool,
        cache: Cache,
    ) -> std::io::Result<Self> {
        use imago::FormatDriverBuilder;
        let qcow2 = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
            .write(!read_only)
            .open(imago::PermissiveImplicitOpenGate::default())?;
        Ok(Self {
            access: imago::FormatAccess::new(qcow2),
            _locked: locked,
            read_only,
            cache,
        })
    }
}

impl Image for Qcow2Image {
    fn size(&self) -> u64 {
        self.access.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.access.read(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.access.write(buf, offset)
    }

    /// imago marks the clusters zero (or frees them) rather than writing zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.access.write_zeroes(offset, len)
    }

    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.access.discard_to_any(offset, len)
    }

    /// The metadata imago caches (L2 tables, refcounts) is written out at every flush,
    /// and synced unless `cache=unsafe`.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.access.flush()?;
        if self.cache != Cache::Unsafe {
            self.access.sync()?;
        }
        Ok(())
    }
}

/// The virtio-blk drives: position, image and whether it is read-only.
pub fn virtio_images(drives: &[OpenDrive]) -> Vec<VirtioDisk> {
    let mut out: Vec<VirtioDisk> = drives
        .iter()
        .filter(|d| d.spec.interface == Interface::Virtio)
        .map(|d| VirtioDisk {
            position: d.spec.index.unwrap_or_default(),
            image: d.image.clone(),
            read_only: d.spec.read_only,
        })
        .collect();
    out.sort_by_key(|d| d.position);
    out
}

/// A virtio-blk drive as the board plugs it in: at PCI slot
/// [`FIRST_VIRTIO_SLOT`] + `position`.
#[derive(Clone)]
pub struct VirtioDisk {
    pub position: usize,
    pub image: SharedImage,
    pub read_only: bool,
}

/// The IDE positions' images.
pub fn ide_images(drives: &[OpenDrive]) -> IdeImages {
    let mut out: IdeImages = Default::default();
    for d in drives {
        if let (Interface::Ide, Some(i)) = (d.spec.interface, d.spec.index) {
            out[i] = Some(d.image.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_options() {
        let s =
            DriveSpec::parse("file=/tmp/a,,b.img,if=ide,format=raw,readonly=on,index=2").unwrap();
        assert_eq!(s.path, PathBuf::from("/tmp/a,b.img"));
        assert!(s.read_only);
        assert_eq!(s.index, Some(2));
        assert_eq!(s.format, Some(Format::Raw));
        for bad in [
            "if=ide",
            "file=x,if=scsi",
            "file=x,format=vmdk",
            "file=x,index=4",
            "file=x,if=virtio,index=8",
            "file=x,index=two",
            "file=x,bogus=1",
            "file=x,cache=directsync",
            "file=x,readonly",
        ] {
            assert!(DriveSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
