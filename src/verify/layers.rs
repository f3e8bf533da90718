//! Image layers read straight from their (gzip, zstd or plain) tar blobs, never unpacked to
//! disk: a layer is indexed (entry metadata only) the first time resolution needs it, top
//! layer first, so lower layers are never decompressed when an upper one decides the path;
//! a file's bytes are taken on a second pass over its layer, bounded to its head and tail.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use crate::rootfs::{Entry, FileKind, Layers, RootfsError, Stat};
use crate::source::Source;

/// Bytes kept from the start of a file (ELF headers, program headers, PT_INTERP, `#!`).
pub const HEAD_BYTES: usize = 1 << 20;
/// Bytes kept from the end (section headers, where ARM attributes are found).
pub const TAIL_BYTES: usize = 64 << 10;
/// A layer with more entries than this is refused (a hostile archive).
const MAX_ENTRIES: usize = 2_000_000;
/// Longest path accepted in a layer (PATH_MAX): a longer one is refused, not indexed.
const MAX_PATH_BYTES: usize = 4096;
/// Deepest path accepted (components).
const MAX_COMPONENTS: usize = 512;
/// Bytes of paths and link targets one layer's index may hold (implicit parent directories
/// included): an archive that needs more is refused with a clear error.
const MAX_INDEX_BYTES: usize = 256 << 20;

/// Opens a layer blob for reading, from the start.
pub type Opener = Arc<dyn Fn() -> io::Result<Box<dyn Read>> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct Meta {
    kind: FileKind,
    mode: u32,
    size: u64,
    link: Option<String>,
    /// A hard link: the content is that of this path in the same layer.
    hard: Option<String>,
    whiteout: bool,
    uid: u32,
    gid: u32,
}

struct Layer {
    open: Opener,
    index: OnceCell<Result<HashMap<String, Meta>, String>>,
}

/// The layers of one image manifest, top first.
pub struct TarLayers {
    layers: Vec<Layer>,
    indexed: Cell<usize>,
    /// Bytes read from the layer blobs (compressed), every pass counted.
    read: std::rc::Rc<Cell<u64>>,
}

/// Counts what is read through it.
struct Counted<R> {
    inner: R,
    read: std::rc::Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn norm(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Wraps a blob reader in the right decompressor, told by its magic. The whole stream is
/// read: every gzip member (eStargz writes one per file and a footer) and every zstd frame,
/// skippable frames passed over (zstd:chunked keeps its manifest in them).
pub fn decompress(mut r: Box<dyn Read>) -> io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let n = read_full(&mut r, &mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained: Box<dyn Read> = Box::new(head.chain(r));
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(chained)))
    } else if magic[..n] == ZSTD_MAGIC {
        Ok(Box::new(ZstdFrames {
            frame: None,
            source: Some(Pushback::new(chained)),
        }))
    } else {
        Ok(chained)
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads until `buf` is full or the stream ends; how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader with a few bytes put back in front (a frame's magic, read to tell its kind).
struct Pushback {
    front: Vec<u8>,
    pos: usize,
    inner: Box<dyn Read>,
}

impl Pushback {
    fn new(inner: Box<dyn Read>) -> Pushback {
        Pushback {
            front: Vec::new(),
            pos: 0,
            inner,
        }
    }
}

impl Read for Pushback {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.front.len() {
            let n = buf.len().min(self.front.len() - self.pos);
            buf[..n].copy_from_slice(&self.front[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Every frame of a zstd stream in turn (ruzstd's decoder reads one).
struct ZstdFrames {
    frame: Option<ruzstd::decoding::StreamingDecoder<Pushback, ruzstd::decoding::FrameDecoder>>,
    /// Between frames.
    source: Option<Pushback>,
}

impl Read for ZstdFrames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(f) = &mut self.frame {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.source = self.frame.take().map(|f| f.into_inner());
            }
            let Some(mut src) = self.source.take() else {
                return Ok(0);
            };
            let mut magic = [0u8; 4];
            match read_full(&mut src, &mut magic)? {
                0 => return Ok(0),
                4 => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a zstd stream ends inside a frame's magic number",
                    ))
                }
            }
            let m = u32::from_le_bytes(magic);
            if (0x184d_2a50..=0x184d_2a5f).contains(&m) {
                // A skippable frame: its length, then that many bytes of no content.
                let mut len = [0u8; 4];
                src.read_exact(&mut len)?;
                let skip = u64::from(u32::from_le_bytes(len));
                let copied = io::copy(&mut (&mut src).take(skip), &mut io::sink())?;
                if copied < skip {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a zstd skippable frame is cut short",
                    ));
                }
                self.source = Some(src);
                continue;
            }
            src.front = magic.to_vec();
            src.pos = 0;
            let d = ruzstd::decoding::StreamingDecoder::new(src)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.frame = Some(d);
        }
    }
}

fn kind_of(t: tar::EntryType) -> Option<FileKind> {
    Some(match t {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
            FileKind::Regular
        }
        tar::EntryType::Directory => FileKind::Directory,
        tar::EntryType::Symlink => FileKind::Symlink,
        tar::EntryType::Fifo => FileKind::Fifo,
        tar::EntryType::Char => FileKind::CharDevice,
        tar::EntryType::Block => FileKind::BlockDevice,
        _ => return None,
    })
}

#[cfg(test)]
fn index(open: &Opener) -> Result<HashMap<String, Meta>, String> {
    index_within(open, MAX_INDEX_BYTES)
}

#[cfg(test)]
fn index_within(open: &Opener, max_bytes: usize) -> Result<HashMap<String, Meta>, String> {
    let r = decompress(open().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    index_stream(r, max_bytes)
}

/// Indexes a decompressed layer tar.
fn index_stream(r: Box<dyn Read>, max_bytes: usize) -> Result<HashMap<String, Meta>, String> {
    let mut a = tar::Archive::new(r);
    let mut map: HashMap<String, Meta> = HashMap::new();
    let mut budget = 0usize;
    let dir = Meta {
        kind: FileKind::Directory,
        mode: 0o755,
        size: 0,
        link: None,
        hard: None,
        whiteout: false,
        uid: 0,
        gid: 0,
    };
    for (n, e) in a.entries().map_err(|e| e.to_string())?.enumerate() {
        if n > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let e = e.map_err(|e| format!("tar: {e}"))?;
        let h = e.header();
        let Some(kind) = kind_of(h.entry_type()) else {
            continue;
        };
        let path = norm(&e.path().map_err(|e| e.to_string())?.to_string_lossy());
        if path.is_empty() {
            continue;
        }
        let link = e
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        let whiteout = kind == FileKind::CharDevice
            && h.device_major().ok().flatten() == Some(0)
            && h.device_minor().ok().flatten() == Some(0);
        let meta = Meta {
            kind,
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            size: h.size().unwrap_or(0),
            hard: if h.entry_type() == tar::EntryType::Link {
                link.as_deref().map(norm)
            } else {
                None
            },
            link: if kind == FileKind::Symlink {
                link
            } else {
                None
            },
            whiteout,
            uid: u32::try_from(h.uid().unwrap_or(0)).unwrap_or(u32::MAX),
            gid: u32::try_from(h.gid().unwrap_or(0)).unwrap_or(u32::MAX),
        };
        if path.len() > MAX_PATH_BYTES {
            return Err(format!(
                "a path of {} bytes (more than {MAX_PATH_BYTES})",
                path.len()
            ));
        }
        if path.split('/').count() > MAX_COMPONENTS {
            return Err(format!(
                "a path more than {MAX_COMPONENTS} directories deep"
            ));
        }
        budget += path.len() + meta.link.as_ref().map_or(0, String::len) + 64;
        // Parents a tar may leave implicit, deepest first; once one is known, so are the
        // ones above it.
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            end = slash;
            let parent = &path[..end];
            if map.contains_key(parent) {
                break;
            }
            budget += parent.len() + 64;
            if budget > max_bytes {
                break;
            }
            map.insert(parent.to_string(), dir.clone());
        }
        if budget > max_bytes {
            return Err(format!(
                "the layer's index needs more than {max_bytes} bytes of paths"
            ));
        }
        map.insert(path, meta);
    }
    Ok(map)
}

impl TarLayers {
    /// `layers` top first.
    pub fn new(layers: Vec<Opener>) -> TarLayers {
        TarLayers {
            layers: layers
                .into_iter()
                .map(|open| Layer {
                    open,
                    index: OnceCell::new(),
                })
                .collect(),
            indexed: Cell::new(0),
            read: std::rc::Rc::new(Cell::new(0)),
        }
    }

    /// Bytes read from the layer blobs so far (compressed, every pass counted).
    pub fn blob_bytes_read(&self) -> u64 {
        self.read.get()
    }

    /// Opens layer `layer`'s blob, counted, decompressed.
    fn stream(&self, layer: usize) -> io::Result<Box<dyn Read>> {
        let raw = (self.layers[layer].open)()?;
        let counted: Box<dyn Read> = Box::new(Counted {
            inner: raw,
            read: self.read.clone(),
        });
        decompress(counted)
    }

    /// How many layers were read to decide (the rest were never decompressed).
    pub fn layers_indexed(&self) -> usize {
        self.indexed.get()
    }

    fn index(&self, layer: usize) -> Result<&HashMap<String, Meta>, RootfsError> {
        let l = &self.layers[layer];
        let r = l.index.get_or_init(|| {
            self.indexed.set(self.indexed.get() + 1);
            match self.stream(layer) {
                Ok(r) => index_stream(r, MAX_INDEX_BYTES),
                Err(e) => Err(e.to_string()),
            }
        });
        r.as_ref().map_err(|e| RootfsError::Io {
            path: format!("layer {layer}"),
            layer,
            source: io::Error::new(io::ErrorKind::InvalidData, e.clone()),
        })
    }
}

/// A file's head and tail, read once from its layer.
pub struct MemFile {
    head: Vec<u8>,
    tail: Vec<u8>,
    size: u64,
    read: Cell<u64>,
}

impl Source for MemFile {
    /// Reads outside the kept head and tail return nothing: parsers then see a short file
    /// there (the only such reads are ARM section headers of binaries over 1 MiB).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = if offset < self.head.len() as u64 {
            self.head.as_slice().read_at(offset, buf)?
        } else {
            let tail_start = self.size - self.tail.len() as u64;
            if offset >= tail_start && !self.tail.is_empty() {
                self.tail.as_slice().read_at(offset - tail_start, buf)?
            } else {
                0
            }
        };
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
    fn len(&self) -> u64 {
        self.size
    }
    fn bytes_read(&self) -> u64 {
        self.read.get()
    }
}

impl Layers for TarLayers {
    type Node = Meta;
    type File = MemFile;

    fn count(&self) -> usize {
        self.layers.len()
    }

    fn stat(&self, layer: usize, rel: &str) -> Result<Option<(Stat, Meta)>, RootfsError> {
        Ok(self.index(layer)?.get(&norm(rel)).map(|m| {
            (
                Stat {
                    kind: m.kind,
                    mode: m.mode,
                    size: m.size,
                    whiteout: m.whiteout,
                    uid: m.uid,
                    gid: m.gid,
                },
                m.clone(),
            )
        }))
    }

    fn readlink(&self, _layer: usize, _rel: &str, node: &Meta) -> Result<Vec<u8>, RootfsError> {
        Ok(node.link.clone().unwrap_or_default().into_bytes())
    }

    fn opaque(&self, layer: usize, rel: &str) -> Result<bool, RootfsError> {
        Ok(self
            .index(layer)?
            .contains_key(&format!("{}/.wh..wh..opq", norm(rel))))
    }

    fn list(&self, layer: usize, rel: &str, max: usize) -> Result<Vec<String>, RootfsError> {
        let dir = norm(rel);
        let mut names: Vec<String> = self
            .index(layer)?
            .keys()
            .filter_map(|k| {
                let rest = if dir.is_empty() {
                    k.as_str()
                } else {
                    k.strip_prefix(dir.as_str())?.strip_prefix('/')?
                };
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect();
        names.sort();
        names.truncate(max);
        Ok(names)
    }

    /// One pass over each layer that holds some of `entries` (not one per file).
    fn heads(&self, entries: &[Entry], len: usize) -> Result<Vec<Vec<u8>>, RootfsError> {
        let mut out = vec![Vec::new(); entries.len()];
        let mut by_layer: HashMap<usize, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let rel = norm(&e.path);
            let target = self
                .index(e.layer)?
                .get(&rel)
                .and_then(|m| m.hard.clone())
                .unwrap_or(rel);
            by_layer
                .entry(e.layer)
                .or_default()
                .entry(target)
                .or_default()
                .push(i);
        }
        for (layer, mut want) in by_layer {
            let io_err = |source: io::Error| RootfsError::Io {
                path: format!("layer {layer}"),
                layer,
                source,
            };
            let r = self.stream(layer).map_err(io_err)?;
            let mut a = tar::Archive::new(r);
            for e in a.entries().map_err(io_err)? {
                if want.is_empty() {
                    break;
                }
                let mut e = e.map_err(io_err)?;
                if e.header().entry_type().is_hard_link() {
                    continue;
                }
                let p = norm(&e.path().map_err(io_err)?.to_string_lossy());
                let Some(idx) = want.remove(&p) else {
                    continue;
                };
                let mut head = Vec::new();
                (&mut e)
                    .take(len as u64)
                    .read_to_end(&mut head)
                    .map_err(io_err)?;
                for i in idx {
                    out[i].clone_from(&head);
                }
            }
        }
        Ok(out)
    }

    fn lazy_merge(&self) -> bool {
        true
    }

    fn open(&self, entry: &Entry) -> Result<MemFile, RootfsError> {
        let rel = norm(&entry.path);
        let target = self
            .index(entry.layer)?
            .get(&rel)
            .and_then(|m| m.hard.clone())
            .unwrap_or(rel);
        let io_err = |source: io::Error| RootfsError::Io {
            path: entry.path.clone(),
            layer: entry.layer,
            source,
        };
        let r = self.stream(entry.layer).map_err(io_err)?;
        let mut a = tar::Archive::new(r);
        for e in a.entries().map_err(io_err)? {
            let mut e = e.map_err(io_err)?;
            if norm(&e.path().map_err(io_err)?.to_string_lossy()) != target
                || e.header().entry_type().is_hard_link()
            {
                continue;
            }
            let size = e.header().size().unwrap_or(0);
            let mut head = Vec::new();
            (&mut e)
                .take(HEAD_BYTES as u64)
                .read_to_end(&mut head)
                .map_err(io_err)?;
            // The tail: keep the last TAIL_BYTES of what follows the head.
            let mut tail: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                let n = e.read(&mut chunk).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
            return Ok(MemFile {
                head,
                tail,
                size,
                read: Cell::new(0),
            });
        }
        Err(RootfsError::NotRegular {
            path: entry.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(paths: &[&str]) -> Opener {
        let mut b = tar::Builder::new(Vec::new());
        for p in paths {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, &b"x"[..]).expect("append");
        }
        let bytes = Arc::new(b.into_inner().expect("tar"));
        Arc::new(move || Ok(Box::new(io::Cursor::new(bytes.as_ref().clone())) as Box<dyn Read>))
    }

    #[test]
    fn implicit_parents_are_indexed_once() {
        let map = index(&layer(&[
            "usr/local/bin/app",
            "usr/local/bin/other",
            "etc/x",
        ]))
        .expect("index");
        for p in ["usr", "usr/local", "usr/local/bin", "etc"] {
            assert_eq!(map[p].kind, FileKind::Directory, "{p}");
        }
        assert_eq!(map["usr/local/bin/app"].kind, FileKind::Regular);
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn absurd_paths_are_refused_with_a_clear_error() {
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        let e = index(&layer(&[long.as_str()])).expect_err("too long");
        assert!(e.contains("bytes"), "{e}");
        let deep = vec!["d"; MAX_COMPONENTS + 1].join("/");
        let e = index(&layer(&[deep.as_str()])).expect_err("too deep");
        assert!(e.contains("deep"), "{e}");
        // At the limits it is indexed.
        let ok = vec!["d"; MAX_COMPONENTS].join("/");
        assert!(index(&layer(&[ok.as_str()])).is_ok());
    }

    fn tar_of(names: &[&str]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for p in names {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, &b"x"[..]).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn opener(bytes: Vec<u8>) -> Opener {
        let bytes = Arc::new(bytes);
        Arc::new(move || Ok(Box::new(io::Cursor::new(bytes.as_ref().clone())) as Box<dyn Read>))
    }

    #[test]
    fn every_gzip_member_and_zstd_frame_is_read() {
        use std::io::Write;
        // One tar, cut in two, each part its own gzip member (as eStargz writes them).
        let tar = tar_of(&["bin/first", "usr/local/bin/app"]);
        let (a, b) = tar.split_at(1024);
        let mut gz = Vec::new();
        for part in [a, b] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let map = index(&opener(gz)).expect("index");
        assert!(map.contains_key("usr/local/bin/app"), "{:?}", map.keys());

        // Two zstd frames with a skippable frame between them (zstd:chunked's metadata).
        let level = ruzstd::encoding::CompressionLevel::Fastest;
        let mut zst = ruzstd::encoding::compress_to_vec(a, level);
        zst.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
        zst.extend_from_slice(&5u32.to_le_bytes());
        zst.extend_from_slice(b"meta!");
        zst.extend(ruzstd::encoding::compress_to_vec(b, level));
        let map = index(&opener(zst.clone())).expect("index");
        assert!(map.contains_key("usr/local/bin/app"), "{:?}", map.keys());
        // A stream cut inside a frame is an error, not a shorter layer.
        let cut = zst[..zst.len() - 3].to_vec();
        assert!(index(&opener(cut)).is_err());
    }

    #[test]
    fn the_index_has_a_byte_budget() {
        let names: Vec<String> = (0..100).map(|i| format!("dir{i}/sub/file")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let e = index_within(&layer(&refs), 4096).expect_err("over budget");
        assert!(e.contains("4096 bytes"), "{e}");
        assert_eq!(
            index_within(&layer(&refs), 1 << 20).map(|m| m.len()),
            Ok(300)
        );
    }
}
