//! Archive bombs against the real processes: a `.tar.gz` whose pax header declares a 1.2 GB
//! record, one with a 300 MB GNU long name, and a zip of a million entries. Each is refused at
//! upload by control with the limit named, and, planted straight into the repository and the
//! app record, refused at staging by an edge that keeps serving the previous version; the peak
//! RSS (`VmHWM`) of control and of the edge stays under 200 MB throughout.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use statiko_tests::fixtures::{self, Upload, assert_status, digest_of, site};
use statiko_tests::{require_tool, secs, wait_until};
use tonic::Code;

use crate::edge_cluster::{body, cluster, page, plant};

/// The bound the issue sets on each process under a bomb.
const PEAK_RSS_LIMIT_KIB: u64 = 200 * 1024;
/// The pax bomb's record: 1200 MiB.
const PAX_MIB: u64 = 1200;
/// The GNU long name bomb's record: 300 MiB.
const LONG_NAME_MIB: u64 = 300;
/// Entries in the zip bomb (ten times `limits.maxBundleEntries`' default).
const ZIP_ENTRIES: u32 = 1_000_000;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("in-memory gzip");
    encoder.finish().expect("in-memory gzip")
}

/// A tar header of type `kind` named `name`, declaring `size` bytes.
fn tar_header(name: &str, kind: u8, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// A `.tar.gz` opening with a header record of type `kind` that declares and holds `mib` MiB
/// (of zeros, as 1 MiB gzip members of about 1 KiB each: gzip members concatenate), then an
/// `index.html`.
fn header_bomb(kind: u8, mib: u64) -> Vec<u8> {
    let zeros = gzip(&vec![0u8; 1 << 20]);
    let mut out = gzip(&tar_header("././@LongLink", kind, mib << 20));
    for _ in 0..mib {
        out.extend_from_slice(&zeros);
    }
    let mut tail = tar_header("index.html", b'0', 2);
    tail.extend_from_slice(b"hi");
    tail.resize(2048, 0);
    out.extend(gzip(&tail));
    out
}

/// A zip of `n` empty stored entries (8-byte names), written by hand: the zip crate's writer
/// would hold every entry's metadata. Local headers, the central directory, then zip64 end
/// records (more than 65535 entries).
fn entry_bomb(n: u32) -> Vec<u8> {
    const LOCAL: u32 = 30 + 8;
    const DOS_DATE_1980_01_01: u16 = 0x21;
    let mut out = Vec::with_capacity(n as usize * (LOCAL as usize + 46 + 8) + 256);
    let name = |i: u32| format!("{i:08}");
    for i in 0..n {
        out.extend(0x0403_4b50u32.to_le_bytes());
        for field in [20u16, 0, 0, 0, DOS_DATE_1980_01_01] {
            out.extend(field.to_le_bytes()); // version, flags, method, time, date
        }
        out.extend([0u8; 12]); // crc, compressed and uncompressed size
        out.extend(8u16.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name(i).as_bytes());
    }
    let cd_start = out.len() as u64;
    for i in 0..n {
        out.extend(0x0201_4b50u32.to_le_bytes());
        for field in [20u16, 20, 0, 0, 0, DOS_DATE_1980_01_01] {
            out.extend(field.to_le_bytes()); // made by, needed, flags, method, time, date
        }
        out.extend([0u8; 12]); // crc, sizes
        for field in [8u16, 0, 0, 0, 0] {
            out.extend(field.to_le_bytes()); // name, extra, comment, disk, internal attrs
        }
        out.extend(0u32.to_le_bytes()); // external attrs
        out.extend((i * LOCAL).to_le_bytes());
        out.extend(name(i).as_bytes());
    }
    let cd_size = out.len() as u64 - cd_start;
    let eocd64 = out.len() as u64;
    out.extend(0x0606_4b50u32.to_le_bytes());
    out.extend(44u64.to_le_bytes());
    out.extend(45u16.to_le_bytes());
    out.extend(45u16.to_le_bytes());
    out.extend([0u8; 8]); // disks
    for field in [u64::from(n), u64::from(n), cd_size, cd_start] {
        out.extend(field.to_le_bytes());
    }
    out.extend(0x0706_4b50u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(eocd64.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // disks
    out.extend([0xffu8; 4]); // entries: see the zip64 record
    out.extend(u32::try_from(cd_size).expect("under 4 GiB").to_le_bytes());
    out.extend(u32::try_from(cd_start).expect("under 4 GiB").to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[allow(
    clippy::print_stderr,
    reason = "the measured peaks go to the test log, for bench/RESULTS.md"
)]
fn report(line: &str) {
    eprintln!("[archive-bombs] {line}");
}

#[tokio::test]
async fn archive_bombs_are_refused_within_bounded_memory() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = cluster(1).await?;
    let edge = &cluster.edges[0];
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("bombs.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    cluster.deploy("bombs.test", "web", "1", true).await?;
    report(&format!(
        "baseline peak RSS: control {} KiB, edge {} KiB",
        cluster.control.peak_rss_kib()?,
        edge.peak_rss_kib()?
    ));

    let pax_size = (PAX_MIB << 20).to_string();
    let long_name_size = (LONG_NAME_MIB << 20).to_string();
    let bombs: [(&str, Vec<u8>, &str, Vec<&str>); 3] = [
        (
            "pax",
            header_bomb(b'x', PAX_MIB),
            "tar-gz",
            vec!["pax extended header", &pax_size, "65536-byte limit"],
        ),
        (
            "gnu-long-name",
            header_bomb(b'L', LONG_NAME_MIB),
            "tar-gz",
            vec!["GNU long name", &long_name_size, "65536-byte limit"],
        ),
        (
            "zip-entries",
            entry_bomb(ZIP_ENTRIES),
            "zip",
            vec!["more than 100000 entries", "limits.maxBundleEntries"],
        ),
    ];
    for (version, bytes, format, needles) in bombs {
        let started = Instant::now();
        // At upload.
        let refused = Upload::new("bomb", version, bytes.clone()).send(&api).await;
        let mut expected = vec!["bundle refused"];
        expected.extend(&needles);
        assert_status(refused, Code::InvalidArgument, &expected);
        let control_peak = cluster.control.peak_rss_kib()?;

        // At staging, planted past control.
        let digest = digest_of(&bytes);
        plant(
            &cluster.etcd,
            &cluster.control,
            "web",
            version,
            format,
            &bytes,
            &digest,
        )
        .await?;
        cluster.deploy("bombs.test", "web", version, false).await?;
        let current = format!("web@{version}");
        let (served, error) = wait_until(secs(30), async || {
            let served = edge.served("bombs.test").await?;
            anyhow::Ok(served.filter(|(_, error)| error.contains(&current)))
        })
        .await
        .with_context(|| format!("{version}: no staging error\n{}", edge.log_tail()))?;
        assert_eq!(served, "web@1", "{version}: {error}");
        for needle in &needles {
            assert!(
                error.contains(needle),
                "{version}: {error:?} lacks {needle:?}"
            );
        }
        assert_eq!(body(edge, "bombs.test").await?, page("web@1"), "{version}");
        let edge_peak = edge.peak_rss_kib()?;
        report(&format!(
            "{version} ({} bytes): refused in {:.1} s; peak RSS control {control_peak} KiB, edge {edge_peak} KiB",
            bytes.len(),
            started.elapsed().as_secs_f64()
        ));
        assert!(
            control_peak < PEAK_RSS_LIMIT_KIB,
            "{version}: control peaked at {control_peak} KiB"
        );
        assert!(
            edge_peak < PEAK_RSS_LIMIT_KIB,
            "{version}: edge peaked at {edge_peak} KiB"
        );
    }
    Ok(())
}
