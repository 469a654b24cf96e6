//! Reading zip archives one central-directory entry at a time, with memory bounded by the limits.
//!
//! The `zip` crate reads the whole central directory into memory before the first entry can be
//! looked at (about 750 bytes per entry), so a million tiny entries cost most of a gigabyte before
//! `limits.maxBundleEntries` could apply; it also keeps the last of two entries with the same
//! name. This reader checks the end record's entry count against the limit first, then reads
//! each central-directory record (at most three 64 KiB fields), unpacks that entry through the
//! shared [`Unpacker`] (which refuses duplicates, as for tar) and moves on, holding nothing per
//! entry but what the unpacker counts. Stored and deflated entries are supported, and zip64;
//! encrypted entries, multi-disk archives and other compression methods are refused.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::time::{Duration, SystemTime};

use super::{ArchiveError, Unpacker, corrupt, display_name, normalize};

const FORMAT: &str = "zip";
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_LOCATOR_LEN: u64 = 20;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LEN: usize = 56;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: usize = 30;
const ZIP64_EXTRA: u16 = 0x0001;
const S_IFMT: u32 = 0o170_000;
/// `version made by` host systems whose external attributes hold a unix mode.
const HOST_UNIX: u8 = 3;
const HOST_OSX: u8 = 19;
const HOST_DOS: u8 = 0;
/// MS-DOS directory attribute.
const DOS_DIR: u32 = 0x10;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn bad(detail: impl std::fmt::Display) -> ArchiveError {
    corrupt(FORMAT, detail)
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), ArchiveError> {
    reader
        .read_exact(buf)
        .map_err(|e| bad(format!("reading the {what}: {e}")))
}

fn seek(reader: &mut impl Seek, to: u64, what: &str) -> Result<(), ArchiveError> {
    reader
        .seek(SeekFrom::Start(to))
        .map(drop)
        .map_err(|e| bad(format!("seeking to the {what}: {e}")))
}

/// Where the central directory is and how many entries it claims.
#[derive(Debug, PartialEq, Eq)]
struct Directory {
    entries: u64,
    offset: u64,
    size: u64,
}

/// Finds the end of central directory record (and its zip64 form) in the archive's tail.
fn find_directory<R: Read + Seek>(reader: &mut R) -> Result<Directory, ArchiveError> {
    let len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| bad(format!("seeking to the end: {e}")))?;
    // The record is 22 bytes followed by a comment of at most 64 KiB.
    let tail_len = len.min((EOCD_LEN + usize::from(u16::MAX)) as u64);
    let tail_start = len - tail_len;
    seek(reader, tail_start, "end record")?;
    // At most 65557 bytes.
    let mut tail = vec![0u8; tail_len as usize];
    read_exact(reader, &mut tail, "end record")?;
    // The last signature whose comment fits in the file.
    let last = tail
        .len()
        .checked_sub(EOCD_LEN)
        .ok_or_else(|| bad("no end of central directory record"))?;
    let at = (0..=last)
        .rev()
        .find(|&i| {
            u32_at(&tail, i) == EOCD_SIG
                && i + EOCD_LEN + usize::from(u16_at(&tail, i + 20)) <= tail.len()
        })
        .ok_or_else(|| bad("no end of central directory record"))?;
    let eocd = &tail[at..at + EOCD_LEN];
    let eocd_pos = tail_start + at as u64;
    if u16_at(eocd, 4) != 0 || u16_at(eocd, 6) != 0 {
        return Err(bad("multi-disk archives are not supported"));
    }
    let mut dir = Directory {
        entries: u64::from(u16_at(eocd, 10)),
        size: u64::from(u32_at(eocd, 12)),
        offset: u64::from(u32_at(eocd, 16)),
    };
    // A zip64 end record is announced by a locator right before the end record.
    if eocd_pos >= EOCD64_LOCATOR_LEN {
        let mut locator = [0u8; EOCD64_LOCATOR_LEN as usize];
        seek(reader, eocd_pos - EOCD64_LOCATOR_LEN, "zip64 locator")?;
        read_exact(reader, &mut locator, "zip64 locator")?;
        if u32_at(&locator, 0) == EOCD64_LOCATOR_SIG {
            let record_pos = u64_at(&locator, 8);
            let mut record = [0u8; EOCD64_LEN];
            seek(reader, record_pos, "zip64 end record")?;
            read_exact(reader, &mut record, "zip64 end record")?;
            if u32_at(&record, 0) != EOCD64_SIG {
                return Err(bad("the zip64 locator points to no zip64 end record"));
            }
            if u32_at(&record, 16) != 0 || u32_at(&record, 20) != 0 {
                return Err(bad("multi-disk archives are not supported"));
            }
            dir = Directory {
                entries: u64_at(&record, 32),
                size: u64_at(&record, 40),
                offset: u64_at(&record, 48),
            };
        }
    }
    if dir.offset.checked_add(dir.size).is_none_or(|end| end > len) {
        return Err(bad("the central directory lies outside the file"));
    }

    Ok(dir)
}

/// One central-directory record, without its comment.
struct CentralEntry {
    host: u8,
    flags: u16,
    method: u16,
    dos_time: u16,
    dos_date: u16,
    crc32: u32,
    compressed_size: u64,
    size: u64,
    external_attrs: u32,
    local_offset: u64,
    name: Vec<u8>,
}

/// Reads the central-directory record at the reader's position, leaving it after the record.
fn read_central(reader: &mut impl Read) -> Result<CentralEntry, ArchiveError> {
    let mut fixed = [0u8; CENTRAL_LEN];
    read_exact(reader, &mut fixed, "central directory")?;
    if u32_at(&fixed, 0) != CENTRAL_SIG {
        return Err(bad("bad central directory record signature"));
    }
    let name_len = usize::from(u16_at(&fixed, 28));
    let extra_len = usize::from(u16_at(&fixed, 30));
    let comment_len = u64::from(u16_at(&fixed, 32));
    if u16_at(&fixed, 34) != 0 && u16_at(&fixed, 34) != u16::MAX {
        return Err(bad("multi-disk archives are not supported"));
    }
    // Each at most 64 KiB.
    let mut name = vec![0u8; name_len];
    read_exact(reader, &mut name, "central directory")?;
    let mut extra = vec![0u8; extra_len];
    read_exact(reader, &mut extra, "central directory")?;
    io::copy(&mut reader.take(comment_len), &mut io::sink())
        .map_err(|e| bad(format!("reading the central directory: {e}")))?;
    let mut entry = CentralEntry {
        host: fixed[5],
        flags: u16_at(&fixed, 8),
        method: u16_at(&fixed, 10),
        dos_time: u16_at(&fixed, 12),
        dos_date: u16_at(&fixed, 14),
        crc32: u32_at(&fixed, 16),
        compressed_size: u64::from(u32_at(&fixed, 20)),
        size: u64::from(u32_at(&fixed, 24)),
        external_attrs: u32_at(&fixed, 38),
        local_offset: u64::from(u32_at(&fixed, 42)),
        name,
    };
    apply_zip64(&mut entry, &extra)?;
    Ok(entry)
}

/// Replaces the saturated 32-bit fields by their zip64 extra field values, in the order the
/// format lists them (size, compressed size, offset).
fn apply_zip64(entry: &mut CentralEntry, mut extra: &[u8]) -> Result<(), ArchiveError> {
    while extra.len() >= 4 {
        let id = u16_at(extra, 0);
        let len = usize::from(u16_at(extra, 2));
        let Some(data) = extra.get(4..4 + len) else {
            return Err(bad("truncated extra field"));
        };
        if id == ZIP64_EXTRA {
            let mut values = data.chunks_exact(8).map(|v| u64_at(v, 0));
            for field in [
                &mut entry.size,
                &mut entry.compressed_size,
                &mut entry.local_offset,
            ] {
                if *field == u64::from(u32::MAX) {
                    *field = values
                        .next()
                        .ok_or_else(|| bad("truncated zip64 extra field"))?;
                }
            }
        }
        extra = &extra[4 + len..];
    }
    Ok(())
}

/// Unpacks a zip archive, one central-directory entry at a time.
pub(super) fn unpack<R: Read + Seek>(
    reader: BufReader<R>,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    let mut reader = reader;
    let limits = unpacker.limits;
    let dir = find_directory(&mut reader)?;
    // Before a byte of the directory is read.
    if dir.entries > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            max: limits.max_entries,
        });
    }
    if dir.entries.saturating_mul(CENTRAL_LEN as u64) > dir.size {
        return Err(bad(
            "the central directory is too small for its entry count",
        ));
    }
    let mut next = dir.offset;
    for _ in 0..dir.entries {
        seek(&mut reader, next, "central directory")?;
        let entry = read_central(&mut reader)?;
        next = reader
            .stream_position()
            .map_err(|e| bad(format!("reading the central directory: {e}")))?;
        if next > dir.offset + dir.size {
            return Err(bad("the central directory overruns its declared size"));
        }
        unpack_entry(&mut reader, &entry, unpacker)?;
    }
    Ok(())
}

fn unpack_entry<R: Read + Seek>(
    reader: &mut BufReader<R>,
    entry: &CentralEntry,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    unpacker.count_entry()?;
    let limits = unpacker.limits;
    let Some(rel) = normalize(&entry.name, limits)? else {
        unpacker.skip();
        return Ok(());
    };
    let named = || display_name(rel.as_bytes());
    if entry.flags & 1 != 0 {
        return Err(ArchiveError::Encrypted { entry: named() });
    }
    let mode = match entry.host {
        HOST_UNIX | HOST_OSX => entry.external_attrs >> 16,
        HOST_DOS if entry.external_attrs & DOS_DIR != 0 => 0o040_000,
        _ => 0,
    };
    let is_dir = entry.name.ends_with(b"/");
    match mode & S_IFMT {
        0o120_000 => Err(ArchiveError::Symlink { entry: named() }),
        0o040_000 => unpacker.add_dir(&rel),
        0 | 0o100_000 if is_dir => unpacker.add_dir(&rel),
        0 | 0o100_000 => {
            let mut data = open_data(reader, entry, &rel)?;
            let mtime = zip_time(entry.dos_date, entry.dos_time);
            unpacker.add_file(&rel, &mut data, entry.size, mtime)?;
            if data.crc().sum() != entry.crc32
                || u64::from(data.crc().amount()) != entry.size & 0xffff_ffff
            {
                return Err(bad(format!(
                    "entry {:?} does not match its checksum or size",
                    named()
                )));
            }
            Ok(())
        }
        other => {
            let kind = match other {
                0o020_000 => "character device",
                0o060_000 => "block device",
                0o010_000 => "fifo",
                0o140_000 => "socket",
                _ => "special file",
            };
            Err(ArchiveError::SpecialFile {
                entry: named(),
                kind,
            })
        }
    }
}

/// The entry's data, decompressed and checksummed as it is read.
fn open_data<'r, R: Read + Seek>(
    reader: &'r mut BufReader<R>,
    entry: &CentralEntry,
    rel: &str,
) -> Result<flate2::CrcReader<Box<dyn Read + 'r>>, ArchiveError> {
    seek(reader, entry.local_offset, "local header")?;
    let mut local = [0u8; LOCAL_LEN];
    read_exact(reader, &mut local, "local header")?;
    if u32_at(&local, 0) != LOCAL_SIG {
        return Err(bad("bad local header signature"));
    }
    let skip = u64::from(u16_at(&local, 26)) + u64::from(u16_at(&local, 28));
    reader
        .seek_relative(skip as i64)
        .map_err(|e| bad(format!("seeking to the entry data: {e}")))?;
    let raw = reader.take(entry.compressed_size);
    let data: Box<dyn Read + 'r> = match entry.method {
        0 => Box::new(raw),
        8 => Box::new(flate2::read::DeflateDecoder::new(raw)),
        method => {
            return Err(bad(format!(
                "entry {:?} uses compression method {method}; only stored and deflate are supported",
                display_name(rel.as_bytes())
            )));
        }
    };
    Ok(flate2::CrcReader::new(data))
}

/// A zip (MS-DOS, no time zone) timestamp read as UTC.
pub(super) fn zip_time(date: u16, time: u16) -> Option<SystemTime> {
    let y = 1980 + i64::from(date >> 9);
    let m = i64::from((date >> 5) & 0x0f);
    let d = i64::from(date & 0x1f);
    let (hour, minute, second) = (
        i64::from(time >> 11),
        i64::from((time >> 5) & 0x3f),
        i64::from(time & 0x1f) * 2,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}
