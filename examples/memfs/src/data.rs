//! Sparse file contents: fixed-size chunks in a `BTreeMap`.
//!
//! A file is its size plus the chunks that hold data; a missing chunk is a hole that
//! reads as zeros and costs nothing, so a 1 TiB file with one byte written costs one
//! chunk. Allocation (st_blocks, `SEEK_DATA`/`SEEK_HOLE`) has chunk granularity: a
//! chunk is either wholly allocated or wholly a hole.
//!
//! Invariants (checked by [`FileData::validate`] on restored state):
//! - every chunk is exactly [`CHUNK`] bytes long;
//! - every byte at or beyond `size` is zero (chunks may lie wholly or partly beyond the
//!   size: `fallocate(FALLOC_FL_KEEP_SIZE)` allocates past the end of file).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes per chunk: the page size, so st_blocks and holes match what tmpfs reports.
pub const CHUNK: u64 = 4096;

/// The largest file size (the kernel's `MAX_LFS_FILESIZE` on 64-bit).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// The contents of a regular file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    size: u64,
    /// Chunk index (offset / CHUNK) -> CHUNK bytes (as byte strings: the same
    /// postcard bytes as a sequence of `u8`, a copy instead of a call per byte).
    #[serde(with = "crate::wire::bytes_value")]
    chunks: BTreeMap<u64, Vec<u8>>,
}

/// The chunk indexes `[first, last)` that the byte range `[off, off + len)` touches.
pub fn chunk_span(off: u64, len: u64) -> (u64, u64) {
    let end = off.saturating_add(len);
    (off / CHUNK, end.div_ceil(CHUNK))
}

impl FileData {
    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The number of allocated chunks.
    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// The same size, holding only the chunks among `chunks` or from `from` on
    /// (what a pre-copy sends of a file changed in places).
    pub fn only(&self, chunks: &std::collections::BTreeSet<u64>, from: Option<u64>) -> FileData {
        let mut part: BTreeMap<u64, Vec<u8>> = chunks
            .iter()
            .filter_map(|&i| Some((i, self.chunks.get(&i)?.clone())))
            .collect();
        if let Some(f) = from {
            part.extend(self.chunks.range(f..).map(|(&i, c)| (i, c.clone())));
        }
        FileData {
            size: self.size,
            chunks: part,
        }
    }

    /// Applies `patch` (from [`FileData::only`] of the same file later): chunks
    /// `chunks` (sorted) and every chunk from `from` on become the patch's, and the
    /// size its size. Fails if the patch holds a chunk outside those.
    pub fn patch(
        &mut self,
        patch: FileData,
        chunks: &[u64],
        from: Option<u64>,
    ) -> Result<(), String> {
        let listed = |i: u64| chunks.binary_search(&i).is_ok() || from.is_some_and(|f| i >= f);
        if let Some(&i) = patch.chunks.keys().find(|&&i| !listed(i)) {
            return Err(format!("chunk {i} changed outside the ranges noted"));
        }
        for i in chunks {
            self.chunks.remove(i);
        }
        if let Some(f) = from {
            self.chunks.split_off(&f);
        }
        self.chunks.extend(patch.chunks);
        self.size = patch.size;
        Ok(())
    }

    /// Checks the invariants of restored data.
    pub fn validate(&self) -> Result<(), String> {
        if self.size > MAX_FILE_SIZE {
            return Err(format!("file size {} is too large", self.size));
        }
        for (idx, chunk) in &self.chunks {
            if chunk.len() as u64 != CHUNK {
                return Err(format!(
                    "chunk {idx} has {} bytes, not {CHUNK}",
                    chunk.len()
                ));
            }
            let start = idx.checked_mul(CHUNK).ok_or("chunk index overflows")?;
            if start.saturating_add(CHUNK) > self.size {
                let from = self.size.saturating_sub(start).min(CHUNK) as usize;
                if chunk[from..].iter().any(|&b| b != 0) {
                    return Err(format!("chunk {idx} holds data beyond the end of file"));
                }
            }
        }
        Ok(())
    }

    /// Reads at `off` into `buf`; returns the bytes read (fewer at the end of file).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.size.saturating_sub(off)) as usize;
        if n == 0 {
            return 0;
        }
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = off + n as u64;
        let (first, last) = chunk_span(off, n as u64);
        for (&idx, chunk) in self.chunks.range(first..last) {
            let start = idx * CHUNK;
            let from = off.max(start);
            let to = end.min(start + CHUNK);
            let dst = (from - off) as usize..(to - off) as usize;
            let src = (from - start) as usize..(to - start) as usize;
            buf[dst].copy_from_slice(&chunk[src]);
        }
        n
    }

    /// How many chunks the byte range `[off, off + len)` touches that are not
    /// allocated yet (what writing or allocating it would cost).
    pub fn missing_chunks(&self, off: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let (first, last) = chunk_span(off, len);
        (last - first) - self.chunks.range(first..last).count() as u64
    }

    /// Writes `data` at `off`, extending the file if it ends beyond the size. The
    /// caller has checked `off + data.len() <= MAX_FILE_SIZE` and the space.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            // A zero-length write changes nothing, not even the size.
            return;
        }
        let mut pos = off;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let take = rest.len().min(CHUNK as usize - within);
            let chunk = self
                .chunks
                .entry(idx)
                .or_insert_with(|| vec![0; CHUNK as usize]);
            chunk[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            pos += take as u64;
        }
        self.size = self.size.max(pos);
    }

    /// Sets the size: shrinking, or setting the same size, frees every chunk beyond
    /// the new end (also those allocated past the old end, as tmpfs does) and zeroes
    /// the tail of the last one kept; growing leaves a hole (chunks allocated past
    /// the old end stay allocated).
    pub fn set_size(&mut self, size: u64) {
        if size <= self.size {
            let keep = size.div_ceil(CHUNK);
            self.chunks.split_off(&keep);
            if size % CHUNK != 0 {
                if let Some(chunk) = self.chunks.get_mut(&(size / CHUNK)) {
                    chunk[(size % CHUNK) as usize..].fill(0);
                }
            }
        }
        self.size = size;
    }

    /// Zeroes `[off, off + len)` without changing the size. Chunks wholly inside the
    /// range, and chunks left all zero, are freed (a hole) unless `keep_allocated`.
    pub fn zero_range(&mut self, off: u64, len: u64, keep_allocated: bool) {
        if len == 0 {
            return;
        }
        let end = off.saturating_add(len);
        let (first, last) = chunk_span(off, len);
        let touched: Vec<u64> = self.chunks.range(first..last).map(|(&k, _)| k).collect();
        for idx in touched {
            let start = idx * CHUNK;
            let from = off.max(start);
            let to = end.min(start + CHUNK);
            let whole = from == start && to == start + CHUNK;
            if whole && !keep_allocated {
                self.chunks.remove(&idx);
                continue;
            }
            if let Some(chunk) = self.chunks.get_mut(&idx) {
                chunk[(from - start) as usize..(to - start) as usize].fill(0);
                if !keep_allocated && chunk.iter().all(|&b| b == 0) {
                    self.chunks.remove(&idx);
                }
            }
        }
    }

    /// Allocates (zero-filled) every chunk `[off, off + len)` touches. The caller has
    /// checked the space with [`FileData::missing_chunks`].
    pub fn allocate(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = chunk_span(off, len);
        for idx in first..last {
            self.chunks
                .entry(idx)
                .or_insert_with(|| vec![0; CHUNK as usize]);
        }
    }

    /// `SEEK_DATA`: the first offset at or after `off` inside an allocated chunk, or
    /// `None` (ENXIO) if there is none before the end of file.
    pub fn seek_data(&self, off: u64) -> Option<u64> {
        if off >= self.size {
            return None;
        }
        let (&idx, _) = self.chunks.range(off / CHUNK..).next()?;
        let at = (idx * CHUNK).max(off);
        (at < self.size).then_some(at)
    }

    /// `SEEK_HOLE`: the first offset at or after `off` in a hole (the end of file
    /// counts as one), or `None` (ENXIO) if `off` is at or beyond the end of file.
    pub fn seek_hole(&self, off: u64) -> Option<u64> {
        if off >= self.size {
            return None;
        }
        let mut expect = off / CHUNK;
        for (&idx, _) in self.chunks.range(expect..) {
            if idx != expect {
                break;
            }
            expect += 1;
        }
        Some((expect * CHUNK).max(off).min(self.size))
    }

    /// The allocated chunk holding `off`, if any (for copying without a buffer).
    pub fn chunk_at(&self, off: u64) -> Option<&[u8]> {
        self.chunks.get(&(off / CHUNK)).map(Vec::as_slice)
    }

    /// The index of the first allocated chunk at or after `idx`.
    pub fn next_chunk(&self, idx: u64) -> Option<u64> {
        self.chunks.range(idx..).next().map(|(&k, _)| k)
    }
}
