//! Reading tar archives (`tar.gz`, `tar.zst`) entry by entry, with every header record bounded.
//!
//! The `tar` crate reads a pax extended header, GNU long name or GNU long link into memory whole,
//! whatever size it declares. So entries are read raw (each header record as its own entry), and
//! a record is refused by its declared size, over [`MAX_HEADER_RECORD`], before a byte of it is
//! read; the records are then applied to the entry they describe here, as the crate would.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use super::{ArchiveError, CHUNK, MAX_HEADER_RECORD, Unpacker, corrupt, display_name, normalize};
use crate::model::BundleFormat;

/// Decompressed bytes allowed per entry on top of the file data (headers, padding, long names).
const PER_ENTRY_OVERHEAD: u64 = 4096;

/// Decompresses and unpacks a `tar.gz` or `tar.zst` stream.
pub(super) fn unpack<R: Read>(
    reader: R,
    format: BundleFormat,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    match format {
        BundleFormat::TarGz => {
            let decoder =
                flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(CHUNK, reader));
            unpack_tar(decoder, "tar.gz", unpacker)
        }
        BundleFormat::TarZst => {
            let decoder =
                zstd::stream::read::Decoder::new(reader).map_err(|e| corrupt("tar.zst", e))?;
            unpack_tar(decoder, "tar.zst", unpacker)
        }
        BundleFormat::Zip => Err(corrupt("zip", "not a tar archive")),
    }
}

/// Caps the decompressed stream, so that even skipped data cannot run forever.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            return Err(io::Error::other(
                "decompressed stream exceeds the size limit",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Header records seen since the last real entry; they describe the next one.
#[derive(Default)]
struct Pending {
    /// Any record at all (an archive may not end on one).
    any: bool,
    long_name: Option<Vec<u8>>,
    long_link: bool,
    pax: Option<PaxFields>,
}

/// The pax keys that matter here.
#[derive(Default)]
struct PaxFields {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

/// Reads one header record, refused by its declared size before anything is read.
fn read_record(
    entry: &mut ::tar::Entry<'_, impl Read>,
    kind: &'static str,
    format: &'static str,
) -> Result<Vec<u8>, ArchiveError> {
    let size = entry
        .header()
        .entry_size()
        .map_err(|e| corrupt(format, e))?;
    if size > MAX_HEADER_RECORD {
        return Err(ArchiveError::HeaderTooLarge { kind, size });
    }
    // `size` is at most MAX_HEADER_RECORD, so the cast cannot truncate.
    let mut record = Vec::with_capacity(size as usize);
    entry
        .take(MAX_HEADER_RECORD)
        .read_to_end(&mut record)
        .map_err(|e| corrupt(format, e))?;
    Ok(record)
}

fn parse_pax(record: &[u8], format: &'static str) -> Result<PaxFields, ArchiveError> {
    let mut fields = PaxFields::default();
    for field in ::tar::PaxExtensions::new(record) {
        let field = field.map_err(|e| corrupt(format, format!("bad pax header: {e}")))?;
        match field.key_bytes() {
            b"path" => fields.path = Some(field.value_bytes().to_owned()),
            b"size" => {
                let size = std::str::from_utf8(field.value_bytes())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| corrupt(format, "bad pax header: size is not a number"))?;
                fields.size = Some(size);
            }
            _ => {}
        }
    }
    Ok(fields)
}

fn unpack_tar<R: Read>(
    reader: R,
    format: &'static str,
    unpacker: &mut Unpacker<'_>,
) -> Result<(), ArchiveError> {
    let limits = unpacker.limits;
    let exceeded = Rc::new(Cell::new(false));
    let capped = CappedReader {
        inner: reader,
        remaining: limits.max_unpacked_size.saturating_add(
            limits
                .max_entries
                .saturating_add(2)
                .saturating_mul(PER_ENTRY_OVERHEAD),
        ),
        exceeded: exceeded.clone(),
    };
    let stream_error = |e: io::Error, entry: &str| {
        if exceeded.get() {
            ArchiveError::TooLarge {
                max: limits.max_unpacked_size,
                entry: entry.to_owned(),
            }
        } else {
            corrupt(format, e)
        }
    };
    let mut archive = ::tar::Archive::new(capped);
    // Raw: header records come as entries of their own, unread (see the module doc).
    let entries = archive.entries().map_err(|e| corrupt(format, e))?.raw(true);
    let mut last = String::new();
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(e, &last))?;
        let kind = entry.header().entry_type();
        let twice = |what: &str| corrupt(format, format!("two {what} records for one entry"));
        if kind.is_gnu_longname() {
            if pending.long_name.is_some() {
                return Err(twice("GNU long name"));
            }
            pending.long_name = Some(read_record(&mut entry, "GNU long name", format)?);
            pending.any = true;
            continue;
        }
        if kind.is_gnu_longlink() {
            if pending.long_link {
                return Err(twice("GNU long link"));
            }
            // Links are refused anyway: only the size matters.
            read_record(&mut entry, "GNU long link", format)?;
            pending.long_link = true;
            pending.any = true;
            continue;
        }
        if kind.is_pax_local_extensions() {
            if pending.pax.is_some() {
                return Err(twice("pax extended header"));
            }
            let record = read_record(&mut entry, "pax extended header", format)?;
            pending.pax = Some(parse_pax(&record, format)?);
            pending.any = true;
            continue;
        }
        unpacker.count_entry()?;
        if kind.is_pax_global_extensions() {
            // Refused by size like the others, then skipped unread.
            let size = entry
                .header()
                .entry_size()
                .map_err(|e| corrupt(format, e))?;
            if size > MAX_HEADER_RECORD {
                return Err(ArchiveError::HeaderTooLarge {
                    kind: "pax global header",
                    size,
                });
            }
            unpacker.skip();
            continue;
        }
        let records = std::mem::take(&mut pending);
        let pax = records.pax.unwrap_or_default();
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| corrupt(format, e))?;
        if let Some(pax_size) = pax.size
            && pax_size != size
        {
            // Which one a reader believes decides where the next header is: refuse both.
            return Err(corrupt(
                format,
                format!("pax size {pax_size} disagrees with the header's {size}"),
            ));
        }
        // The tar crate's precedence: a GNU long name, then a pax path, then the header.
        let raw = match (records.long_name, pax.path) {
            (Some(mut long), _) => {
                if long.last() == Some(&0) {
                    long.pop();
                }
                long
            }
            (None, Some(path)) => path,
            (None, None) => entry.header().path_bytes().into_owned(),
        };
        last = display_name(&raw);
        let Some(rel) = normalize(&raw, limits)? else {
            unpacker.skip();
            continue;
        };
        let named = || display_name(rel.as_bytes());
        // Old (v7) archives mark directories by a trailing slash on a regular entry.
        let old_style_dir = kind == ::tar::EntryType::Regular && raw.ends_with(b"/") && size == 0;
        match kind {
            _ if old_style_dir => unpacker.add_dir(&rel)?,
            ::tar::EntryType::Regular | ::tar::EntryType::Continuous => {
                let mtime = entry
                    .header()
                    .mtime()
                    .ok()
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
                match unpacker.add_file(&rel, &mut entry, size, mtime) {
                    Err(ArchiveError::Io { source, .. }) if exceeded.get() => {
                        return Err(stream_error(source, &last));
                    }
                    other => other?,
                }
            }
            ::tar::EntryType::Directory => unpacker.add_dir(&rel)?,
            ::tar::EntryType::Symlink => return Err(ArchiveError::Symlink { entry: named() }),
            ::tar::EntryType::Link => return Err(ArchiveError::HardLink { entry: named() }),
            ::tar::EntryType::Char => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "character device",
                });
            }
            ::tar::EntryType::Block => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "block device",
                });
            }
            ::tar::EntryType::Fifo => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "fifo",
                });
            }
            _ => {
                return Err(ArchiveError::SpecialFile {
                    entry: named(),
                    kind: "unsupported tar entry type",
                });
            }
        }
    }
    if pending.any {
        return Err(corrupt(
            format,
            "header records describing a member but no member follows",
        ));
    }
    Ok(())
}
