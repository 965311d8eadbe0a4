//! Compaction: a fresh checkpoint and a new log, while appends go on.
use super::error::JournalError;
use super::layout::{
    align8, align_area, record_len, Meta, RecordHeader, AREA_ALIGN, RECORD_HEADER_LEN, SEAL_ROOM,
};
use super::record::KIND_SEAL;
use super::storage::Storage;
use super::writer::{write_meta, write_pieces, write_record, Journal, Mark, Pieces, Tail};
use crate::format::crc::crc32;

/// Rounds of copying records without the lock before the last, under it.
const COPY_ROUNDS: u32 = 4;
/// Stop the rounds once fewer bytes of records than this are left to copy.
const COPY_UNDER_LOCK: u64 = 64 << 10;
/// Records are copied in pieces of about this many bytes.
const COPY_PIECE: u64 = 1 << 20;

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
        self.compact_pieces(mark, Pieces::whole(&[checkpoint]))
    }

    /// [`Journal::compact`] with the checkpoint in pieces.
    pub(crate) fn compact_pieces(
        &self,
        mark: Mark,
        checkpoint: Pieces<'_>,
    ) -> Result<(), JournalError> {
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
        checkpoint: Pieces<'_>,
        may_go_before: bool,
    ) -> Result<(), JournalError> {
        let ck_room = align8(checkpoint.len);
        let ck_crc = checkpoint.crc;
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
                checkpoint_len: checkpoint.len,
                first_seq: mark.seq,
                checkpoint_crc: ck_crc,
            };
            (meta, before)
        };

        // 2. Without the lock: the checkpoint, into space no live record uses;
        // then the records committed since the mark, in rounds while they are
        // many (committed records never change, so they need no lock).
        let room = |t: &Tail| if before { t.meta.area } else { max };
        let mut copied = mark.offset;
        let mut dst = meta.log_start();
        let mut written = self
            .storage
            .grow((dst + SEAL_ROOM).max(self.storage.len()))
            .map_err(JournalError::from)
            .and_then(|()| write_pieces(&self.storage, meta.area, checkpoint.parts))
            .and_then(|()| Ok(self.storage.write(dst, &[0u8; 24])?));
        if written.is_ok() {
            fuse_session::fault::point("compact-checkpoint");
        }
        for _ in 0..COPY_ROUNDS {
            if written.is_err() {
                break;
            }
            let (end, room) = {
                let t = self.lock();
                (t.end, room(&t))
            };
            if end - copied <= COPY_UNDER_LOCK {
                break;
            }
            if dst + (end - copied) + SEAL_ROOM > room {
                written = Err(JournalError::Compaction(OUTRAN.into()));
                break;
            }
            written = self.copy_records(copied, end, dst, mark.epoch, meta.epoch);
            dst += end - copied;
            copied = end;
        }
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

        // 3. Under the lock: the last records, the new header, the seal.
        let new_end = dst + (t.end - copied);
        if new_end + SEAL_ROOM > room(&t) {
            self.end_compaction(&mut t);
            return Err(JournalError::Compaction(OUTRAN.into()));
        }
        if let Err(e) = self.switch(&mut t, &meta, copied, dst) {
            t.failed = Some(e.to_string());
            self.end_compaction(&mut t);
            return Err(e);
        }
        t.meta = meta;
        t.end = new_end;
        self.end_compaction(&mut t);
        Ok(())
    }

    /// Copies the committed records in `[from, to)` of the log of epoch
    /// `old_epoch` to `dst`, re-checksummed for epoch `new_epoch`, in pieces of
    /// about 1 MiB, and zeroes the header place after them. The new area is not
    /// live until its header is committed, so no store order matters here.
    fn copy_records(
        &self,
        from: u64,
        to: u64,
        dst: u64,
        old_epoch: u64,
        new_epoch: u64,
    ) -> Result<(), JournalError> {
        let end = dst + (to - from) + RECORD_HEADER_LEN;
        if end > self.storage.len() {
            self.storage.grow(end)?;
        }
        let changed =
            |at: u64| JournalError::Io(format!("the record at {at} changed under the journal"));
        let mut buf = Vec::new();
        let mut src = from;
        while src < to {
            // A piece of whole records: at least one, about 1 MiB.
            let mut piece = 0u64;
            while src + piece < to && piece < COPY_PIECE {
                let mut hb = [0u8; 24];
                self.storage.read(src + piece, &mut hb)?;
                let h = RecordHeader::decode(&hb, old_epoch).ok_or_else(|| changed(src + piece))?;
                piece += record_len(u64::from(h.len));
            }
            if src + piece > to {
                return Err(changed(src));
            }
            buf.resize(piece as usize, 0);
            self.storage.read(src, &mut buf)?;
            let mut at = 0usize;
            while at < buf.len() {
                let hb: [u8; 24] = buf[at..at + 24].try_into().map_err(|_| changed(src))?;
                let h = RecordHeader::decode(&hb, old_epoch).ok_or_else(|| changed(src))?;
                buf[at..at + 24].copy_from_slice(&h.encode(new_epoch));
                at += record_len(u64::from(h.len)) as usize;
            }
            self.storage.write(dst + (src - from), &buf)?;
            src += piece;
        }
        self.storage
            .write(dst + (to - from), &[0u8; RECORD_HEADER_LEN as usize])?;
        Ok(())
    }

    /// Copies the records in `[from, t.end)` to the new log at `dst`, writes the
    /// new header, then seals the old log.
    fn switch(&self, t: &mut Tail, meta: &Meta, from: u64, dst: u64) -> Result<(), JournalError> {
        let need = t.end + SEAL_ROOM;
        if need > self.storage.len() {
            self.storage.grow(need)?;
        }
        self.copy_records(from, t.end, dst, t.meta.epoch, meta.epoch)?;
        fuse_session::fault::point("compact-copy");
        // The switch: from here on, recovery reads the new epoch.
        write_meta(&self.storage, meta)?;
        fuse_session::fault::point("compact-header");
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
        )?;
        fuse_session::fault::point("compact-seal");
        Ok(())
    }

    fn end_compaction(&self, t: &mut Tail) {
        t.compacting = false;
        t.limit = self.storage.max_len();
        self.room.notify_all();
    }
}
