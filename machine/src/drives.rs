//! Disk drives as a user gives them, in QEMU's words: `--drive file=PATH[,if=ide]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Ide,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
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
                        "virtio" => {
                            return Err("if=virtio: virtio-blk is not built yet; use if=ide".into())
                        }
                        _ => return Err(format!("if={value}: the interfaces are ide")),
                    }
                }
                "format" => {
                    spec.format = Some(match value {
                        "raw" => Format::Raw,
                        "qcow2" => {
                            return Err("format=qcow2: qcow2 images are not supported yet; \
                                        convert with qemu-img convert -O raw"
                                .into())
                        }
                        _ => return Err(format!("format={value}: the formats are raw")),
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
                        .ok()
                        .filter(|i| *i < IDE_SLOTS)
                        .ok_or_else(|| format!("index={value}: 0 to {}", IDE_SLOTS - 1))?;
                    spec.index = Some(i);
                }
                _ => return Err(format!("'{key}' is not a drive option")),
            }
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
    #[error("drive {path}: IDE position {index} is taken by another drive")]
    Taken { path: String, index: usize },
    #[error("drive {path}: no free IDE position (there are {IDE_SLOTS})")]
    Full { path: String },
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
    let mut taken = [false; IDE_SLOTS];
    let mut placed: Vec<DriveSpec> = Vec::new();
    // Explicit positions first, then the others in order into the free ones.
    for s in specs.iter().filter(|s| s.index.is_some()) {
        let i = s.index.unwrap_or_default();
        if std::mem::replace(&mut taken[i], true) {
            return Err(DriveError::Taken {
                path: s.path.display().to_string(),
                index: i,
            });
        }
        placed.push(s.clone());
    }
    for s in specs.iter().filter(|s| s.index.is_none()) {
        let i = taken
            .iter()
            .position(|t| !t)
            .ok_or_else(|| DriveError::Full {
                path: s.path.display().to_string(),
            })?;
        taken[i] = true;
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
        Some(Format::Raw) => "raw",
        None if probed_qcow2 => {
            return Err(fail(
                "is a qcow2 image, which Gantry does not read yet; convert it with \
                 qemu-img convert -O raw"
                    .into(),
            ))
        }
        None => "raw",
    };
    let raw = RawImage::new(file, read_only, spec.cache).map_err(|e| fail(e.to_string()))?;
    let image: Box<dyn Image> = if snapshot && !spec.read_only {
        let overlay = anonymous_file().map_err(|e| fail(format!("--snapshot overlay: {e}")))?;
        Box::new(SnapshotImage::new(Box::new(raw), overlay).map_err(|e| fail(e.to_string()))?)
    } else {
        Box::new(raw)
    };
    Ok(OpenDrive {
        spec,
        image: Rc::new(RefCell::new(image)),
        format,
    })
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
            "file=x,bogus=1",
            "file=x,cache=directsync",
            "file=x,readonly",
        ] {
            assert!(DriveSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
