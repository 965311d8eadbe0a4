//! Compaction: a fresh checkpoint and a new log, while appends go on.
use super::error::JournalError;
use super::layout::{
    align8, align_area, Meta, RecordHeader, AREA_ALIGN, RECORD_HEADER_LEN, SEAL_ROOM,
};
use super::record::KIND_SEAL;
use super::storage::Storage;
use super::writer::{
    write_chunked, write_meta, write_record, write_record_then_end, Journal, Mark, Tail,
};
use crate::format::crc::crc32;

/// Why a compaction into the room before the live log gave up.
const OUTRAN: &str = "the log grew past the room before it while the checkpoint was written";

impl<S: Storage> Journal<S> {
    /// Replaces the checkpoint with `checkpoint`, which must hold exactly the
    /// records before `mark` (see [`Journal::mark`]), and starts a new log holding
    /// the records appended since `mark`, in a new epoch.
    ///
    /// Appends go on meanwhile: the checkpoint is written into a free area of the
    /// storage without the journal's lock; the lock is held only to copy the
    /// records appended since `mark` into the new log and to write the new header.
    /// When the new area lies after the live log, the live log may grow only up to
    /// it, and appends that do not fit wait for the end of the compaction.
    ///
    /// A crash at any instant recovers either the old epoch (checkpoint and log,
    /// untouched until the new header is whole) or the new one, never a mix.
    ///
    /// # Errors
    /// [`JournalError::Compaction`] when it did not run (another is running, the
    /// mark is from another epoch, the new log would not fit before the live one):
    /// the journal goes on unchanged. [`JournalError::Full`] when the storage
    /// cannot hold both areas. [`JournalError::Io`] when the storage fails.
    pub fn compact(&self, mark: Mark, checkpoint: &[u8]) -> Result<(), JournalError> {
        match self.compact_once(mark, checkpoint, true) {
            // Appends outran the room before the live log: put the new area after
            // it instead, where the live log is bounded while the checkpoint is
            // written, so the second attempt cannot fail that way.
            Err(JournalError::Compaction(e)) if e == OUTRAN => {
                self.compact_once(mark, checkpoint, false)
            }
            r => r,
        }
    }

    fn compact_once(
        &self,
        mark: Mark,
        checkpoint: &[u8],
        may_go_before: bool,
    ) -> Result<(), JournalError> {
        let ck_room = align8(checkpoint.len() as u64);
        let ck_crc = crc32(checkpoint);
        let max = self.storage.max_len();

        // 1. Under the lock: where the new area goes.
        let (meta, before) = {
            let mut t = self.lock();
            if let Some(e) = &t.failed {
                return Err(JournalError::Io(format!("an earlier store failed: {e}")));
            }
            if t.compacting {
                return Err(JournalError::Compaction(
                    "another compaction is running".into(),
                ));
            }
            if mark.epoch != t.meta.epoch
                || mark.seq < t.meta.first_seq
                || mark.seq > t.next_seq
                || mark.offset > t.end
            {
                return Err(JournalError::Compaction(format!(
                    "the mark (epoch {}, record {}) is not a point of the current log (epoch \
                     {}, records {} to {})",
                    mark.epoch, mark.seq, t.meta.epoch, t.meta.first_seq, t.next_seq
                )));
            }
            let tail = t.end - mark.offset;
            // Room for what is appended while the checkpoint is written.
            let headroom = self.options.compact_headroom.max(ck_room / 2).max(tail);
            let room_before = t.meta.area - AREA_ALIGN;
            let before = may_go_before && ck_room + tail + headroom + SEAL_ROOM <= room_before;
            let area = if before {
                AREA_ALIGN
            } else {
                align_area(t.end + SEAL_ROOM + headroom)
            };
            let needed = area + ck_room + tail + SEAL_ROOM;
            if needed > max {
                return Err(JournalError::Full { needed, max });
            }
            if !before {
                t.limit = area;
            }
            t.compacting = true;
            let meta = Meta {
                epoch: t.meta.epoch + 1,
                area,
                checkpoint_len: checkpoint.len() as u64,
                first_seq: mark.seq,
                checkpoint_crc: ck_crc,
            };
            (meta, before)
        };

        // 2. Without the lock: the checkpoint, into space no live record uses.
        let written = self
            .storage
            .grow((meta.area + ck_room).max(self.storage.len()))
            .map_err(JournalError::from)
            .and_then(|()| write_chunked(&self.storage, meta.area, checkpoint));
        let mut t = self.lock();
        if let Err(e) = written {
            self.end_compaction(&mut t);
            return Err(e);
        }
        if let Some(e) = &t.failed {
            let e = JournalError::Io(format!("an append failed meanwhile: {e}"));
            self.end_compaction(&mut t);
            return Err(e);
        }

        // 3. Under the lock: copy the records since the mark, write the header.
        let tail = t.end - mark.offset;
        let new_end = meta.log_start() + tail;
        let room = if before { t.meta.area } else { max };
        if new_end + SEAL_ROOM > room {
            self.end_compaction(&mut t);
            return Err(JournalError::Compaction(OUTRAN.into()));
        }
        if let Err(e) = self.switch(&mut t, &meta, mark.offset, new_end) {
            t.failed = Some(e.to_string());
            self.end_compaction(&mut t);
            return Err(e);
        }
        t.meta = meta;
        t.end = new_end;
        self.end_compaction(&mut t);
        Ok(())
    }

    /// Copies the records in `[from, t.end)` to the new log, writes the new header,
    /// then seals the old log.
    fn switch(
        &self,
        t: &mut Tail,
        meta: &Meta,
        from: u64,
        new_end: u64,
    ) -> Result<(), JournalError> {
        let need = new_end.max(t.end) + SEAL_ROOM;
        if need > self.storage.len() {
            self.storage.grow(need)?;
        }
        let mut src = from;
        let mut dst = meta.log_start();
        self.storage
            .write(dst, &[0u8; RECORD_HEADER_LEN as usize])?;
        let mut buf = Vec::new();
        while src < t.end {
            let mut hb = [0u8; 24];
            self.storage.read(src, &mut hb)?;
            let h = RecordHeader::decode(&hb, t.meta.epoch).ok_or_else(|| {
                JournalError::Io(format!("the record at {src} changed under the journal"))
            })?;
            let len = u64::from(h.len);
            buf.resize(len as usize, 0);
            self.storage.read(src + RECORD_HEADER_LEN, &mut buf)?;
            write_record_then_end(&self.storage, dst, meta.epoch, &h, &[&buf])?;
            let size = super::layout::record_len(len);
            src += size;
            dst += size;
        }
        // The switch: from here on, recovery reads the new epoch.
        write_meta(&self.storage, meta)?;
        let seal = RecordHeader {
            len: 8,
            kind: KIND_SEAL,
            seq: t.next_seq,
            payload_crc: crc32(&meta.epoch.to_le_bytes()),
        };
        write_record(
            &self.storage,
            t.end,
            t.meta.epoch,
            &seal,
            &[&meta.epoch.to_le_bytes()],
        )
    }

    fn end_compaction(&self, t: &mut Tail) {
        t.compacting = false;
        t.limit = self.storage.max_len();
        self.room.notify_all();
    }
}
