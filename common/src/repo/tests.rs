//! Tests of `repo.rs`.

use std::io::Read as _;

use object_store::memory::InMemory;

use super::*;
use crate::crypto::sha256;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn read_all(reader: BundleReader) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map(|_| out)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn reads_a_local_file_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = crate::config::RepoConfig::default();
    config.local.path = tmp.path().join("repo");
    let repo = BundleRepo::from_config(&config).unwrap();
    let bytes = data(300_000);
    let digest = hex(&sha256(&bytes));
    let upload = tmp.path().join("upload");
    std::fs::write(&upload, &bytes).unwrap();
    repo.put_file(&digest, &upload).await.unwrap();

    let reader = repo.open(&digest).await.unwrap();
    assert!(matches!(reader.source, Source::File { .. }));
    assert_eq!(reader.size(), bytes.len() as u64);
    assert_eq!(read_all(reader).await.unwrap(), bytes);

    let dest = tmp.path().join("copy");
    assert_eq!(
        hex(&repo.download_to(&digest, &dest).await.unwrap()),
        digest
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[tokio::test]
async fn streams_a_remote_object_through_a_bounded_channel() {
    let repo = BundleRepo::from_store(Arc::new(InMemory::new()), "p").unwrap();
    // More chunks than the channel holds, so the pump waits for the reader.
    let bytes = data(3 << 20);
    let digest = hex(&sha256(&bytes));
    repo.store
        .put(
            &repo.path_for(&digest).unwrap().1,
            PutPayload::from(bytes.clone()),
        )
        .await
        .unwrap();
    let reader = repo.open(&digest).await.unwrap();
    assert!(matches!(reader.source, Source::Stream { .. }));
    assert_eq!(read_all(reader).await.unwrap(), bytes);

    let missing = hex(&sha256(b"missing"));
    let err = repo.open(&missing).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn a_short_or_failed_stream_is_an_error() {
    let reader = |items: Vec<Result<Bytes, RepoError>>, size: u64| {
        let (sender, chunks) = mpsc::channel(STREAM_CHUNKS);
        for item in items {
            sender.try_send(item).unwrap();
        }
        BundleReader {
            location: "test".into(),
            size,
            read: 0,
            source: Source::Stream {
                chunks,
                current: Bytes::new(),
                pump: tokio::spawn(async {}),
            },
        }
    };
    let short = reader(vec![Ok(Bytes::from_static(b"abc"))], 10);
    let err = read_all(short).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let repo_err = BundleReader::repo_error(&err).unwrap();
    assert!(repo_err.is_unavailable(), "{repo_err}");
    assert!(
        repo_err.to_string().contains("after 3 of 10 bytes"),
        "{repo_err}"
    );

    let failed = reader(
        vec![
            Ok(Bytes::from_static(b"abc")),
            Err(RepoError::Unavailable("connection reset".into())),
        ],
        10,
    );
    let err = read_all(failed).await.unwrap_err();
    let repo_err = BundleReader::repo_error(&err).unwrap();
    assert!(
        repo_err.to_string().contains("connection reset"),
        "{repo_err}"
    );

    // Bytes past the announced size are not part of the bundle.
    let long = reader(vec![Ok(Bytes::from_static(b"abcdef"))], 4);
    assert_eq!(read_all(long).await.unwrap(), b"abcd");
}
