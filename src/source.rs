//! Bounded, counted reads of one file.
//!
//! Inspection never reads a whole file: it asks for a header, a table or a string at an
//! offset, each capped, and counts every byte so a benchmark can prove the cost does not grow
//! with the image.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Something that can be read at offsets: a file in a container root, or bytes in memory.
pub trait Source {
    /// Reads up to `buf.len()` bytes at `offset`; fewer at end of file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes read so far (for the bytes-per-inspection figure).
    fn bytes_read(&self) -> u64 {
        0
    }
}

impl Source for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(<[u8]>::len(self));
        let n = buf.len().min(<[u8]>::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

/// A file opened by the rootfs resolver, with the size taken from its `fstat`.
pub struct FileSource {
    file: File,
    len: u64,
    read: Cell<u64>,
}

impl FileSource {
    pub fn new(file: File, len: u64) -> FileSource {
        FileSource {
            file,
            len,
            read: Cell::new(0),
        }
    }
}

impl Source for FileSource {
    fn bytes_read(&self) -> u64 {
        self.read.get()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.read.set(self.read.get() + done as u64);
        Ok(done)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Reads exactly `len` bytes at `offset` (capped by the caller), or fewer at end of file.
pub fn read_vec<S: Source + ?Sized>(src: &S, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = src.read_at(offset, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
