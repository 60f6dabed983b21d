//! Retention: records older than the retention period are moved to an archive file and
//! removed from the store, up to a signed checkpoint, so both halves still verify: the
//! archive from its own starting hash to the checkpoint, the store from the checkpoint on.
//!
//! Archive file (JSON Lines, UTF-8):
//! 1. a header `{"sekimori_archive":1,"from_seq":F,"to_seq":T,"prev_hash":"<hex>"}` — the
//!    chain hash before record F;
//! 2. the stored canonical bytes of records F..=T, one per line (canonical JSON has no
//!    raw newlines);
//! 3. the signed checkpoint at T: `{"checkpoint":{...}}`.

use super::checkpoint::verify_signature;
use super::record::chain_hash;
use super::store::{Checkpoint, Store, StoreError};
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archive file: {0}")]
    Io(#[from] std::io::Error),
    #[error("nothing to archive: no signed checkpoint covers records older than the cutoff")]
    Nothing,
    #[error("the store does not verify up to the checkpoint at {0}; archive refused")]
    Unverified(u64),
    #[error("archive file is malformed at line {0}")]
    Malformed(usize),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveReport {
    pub from_seq: u64,
    pub to_seq: u64,
    pub records: u64,
    pub last_hash: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    sekimori_archive: u32,
    from_seq: u64,
    to_seq: u64,
    prev_hash: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Trailer {
    checkpoint: Checkpoint,
}

/// Moves the records older than `before_us` (up to the latest checkpoint among them) into
/// `out`, then removes them from the store in one transaction. The file is written and
/// fsync'd before anything is removed.
pub fn archive(store: &Store, before_us: i64, out: &Path) -> Result<ArchiveReport, ArchiveError> {
    let Some(last_old) = store.last_seq_before(before_us)? else {
        return Err(ArchiveError::Nothing);
    };
    let anchor = store.anchor()?;
    let cp = store
        .checkpoints()?
        .into_iter()
        .filter(|c| c.seq <= last_old && c.seq > anchor.seq)
        .max_by_key(|c| c.seq)
        .ok_or(ArchiveError::Nothing)?;
    let file = std::fs::File::create(out)?;
    let mut w = std::io::BufWriter::new(file);
    let header = Header {
        sekimori_archive: 1,
        from_seq: anchor.seq + 1,
        to_seq: cp.seq,
        prev_hash: hex::encode(anchor.hash),
    };
    writeln!(w, "{}", serde_json::to_string(&header).unwrap_or_default())?;
    let mut prev = anchor.hash;
    let mut expected = anchor.seq + 1;
    let mut broken = false;
    let mut write_err: Option<std::io::Error> = None;
    store.for_each(|rec| {
        if rec.seq > cp.seq {
            return false;
        }
        let h = chain_hash(&prev, rec.body);
        if rec.seq != expected || rec.hash != h.as_slice() {
            broken = true;
            return false;
        }
        if let Err(e) = w.write_all(rec.body).and_then(|()| w.write_all(b"\n")) {
            write_err = Some(e);
            return false;
        }
        prev = h;
        expected += 1;
        true
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if broken || expected != cp.seq + 1 || hex::encode(prev) != cp.hash {
        drop(w);
        let _ = std::fs::remove_file(out);
        return Err(ArchiveError::Unverified(cp.seq));
    }
    writeln!(
        w,
        "{}",
        serde_json::to_string(&Trailer {
            checkpoint: cp.clone()
        })
        .unwrap_or_default()
    )?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    store.remove_through(cp.seq, &prev)?;
    Ok(ArchiveReport {
        from_seq: header.from_seq,
        to_seq: cp.seq,
        records: cp.seq + 1 - header.from_seq,
        last_hash: cp.hash,
    })
}

/// Verifies an archive file: every record re-hashed from the header's starting hash,
/// continuous sequence, and the final hash equal to the signed checkpoint's (signature
/// checked with `public_key`).
pub fn verify_archive(
    path: &Path,
    public_key: Option<&[u8]>,
) -> Result<Result<ArchiveReport, (u64, String)>, ArchiveError> {
    verify_archive_from(
        std::io::BufReader::new(std::fs::File::open(path)?),
        public_key,
    )
}

/// [`verify_archive`] over any reader (the archive may come from anywhere: it is untrusted).
pub fn verify_archive_from(
    reader: impl std::io::BufRead,
    public_key: Option<&[u8]>,
) -> Result<Result<ArchiveReport, (u64, String)>, ArchiveError> {
    let mut lines = reader.lines();
    let header: Header = serde_json::from_str(&lines.next().ok_or(ArchiveError::Malformed(1))??)
        .map_err(|_| ArchiveError::Malformed(1))?;
    let mut prev: [u8; 32] = hex::decode(&header.prev_hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(ArchiveError::Malformed(1))?;
    // Sequence numbers start at 1 and an archive holds at least one record; anything else
    // is not an archive this service wrote (and would make the arithmetic below wrap).
    if header.from_seq == 0 || header.from_seq > header.to_seq || header.to_seq == u64::MAX {
        return Err(ArchiveError::Malformed(1));
    }
    let mut seq = header.from_seq;
    let mut trailer: Option<Trailer> = None;
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.starts_with("{\"checkpoint\"") {
            trailer =
                Some(serde_json::from_str(&line).map_err(|_| ArchiveError::Malformed(i + 2))?);
            break;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|_| ArchiveError::Malformed(i + 2))?;
        if v["seq"].as_u64() != Some(seq) {
            return Ok(Err((
                seq,
                format!("record {seq} is missing or out of order in the archive"),
            )));
        }
        prev = chain_hash(&prev, line.as_bytes());
        // Records beyond the header's range are never accepted.
        if seq > header.to_seq {
            return Ok(Err((
                seq,
                format!("record {seq} lies beyond the archive's range"),
            )));
        }
        seq += 1;
    }
    let Some(t) = trailer else {
        return Ok(Err((
            seq,
            String::from("the archive has no checkpoint: it was truncated"),
        )));
    };
    if t.checkpoint.seq != seq - 1 || t.checkpoint.seq != header.to_seq {
        return Ok(Err((
            seq,
            String::from("the archive ends before its checkpoint: records were removed"),
        )));
    }
    if t.checkpoint.hash != hex::encode(prev) {
        return Ok(Err((
            header.from_seq,
            format!(
                "records {}..={} do not chain to the signed checkpoint",
                header.from_seq, header.to_seq
            ),
        )));
    }
    if public_key.is_some_and(|k| !verify_signature(&t.checkpoint, k)) {
        return Ok(Err((
            header.to_seq,
            String::from("the archive's checkpoint has an invalid signature"),
        )));
    }
    Ok(Ok(ArchiveReport {
        from_seq: header.from_seq,
        to_seq: header.to_seq,
        records: header.to_seq + 1 - header.from_seq,
        last_hash: t.checkpoint.hash,
    }))
}
