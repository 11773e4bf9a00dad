//! `S3Archive` against moto: checksummed puts, no-op re-puts, round trips.

use tb_aws::testing::TestAws;
use tb_core::ports::{Archive, PortError};

fn sha256(bytes: &[u8]) -> String {
    tb_core::encoding::sha256_hex(bytes)
}

#[tokio::test]
async fn putting_the_same_bytes_twice_is_a_no_op_the_second_time_and_get_round_trips() {
    let aws = TestAws::new().await;
    let archive = aws.archive();
    let key = "projects/proj_1/req_1.tar.gz";
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sum = sha256(&bytes);
    archive.put(key, &bytes, &sum).await.unwrap();
    assert_eq!(archive.get(key).await.unwrap(), Some(bytes.clone()));

    let head = aws
        .clients
        .s3
        .head_object()
        .bucket(&aws.settings.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.metadata().unwrap()["sha256"], sum);

    // Swap the stored bytes behind the archive's back, keeping the metadata: a second put of
    // the original bytes must not upload (it only compares the recorded SHA-256).
    let marker = b"marker".to_vec();
    aws.clients
        .s3
        .put_object()
        .bucket(&aws.settings.bucket)
        .key(key)
        .metadata("sha256", &sum)
        .body(marker.clone().into())
        .send()
        .await
        .unwrap();
    archive.put(key, &bytes, &sum).await.unwrap();
    let raw = aws
        .clients
        .s3
        .get_object()
        .bucket(&aws.settings.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.body.collect().await.unwrap().into_bytes().to_vec(),
        marker,
        "the second put uploaded"
    );
    // ... and a get notices that those bytes do not match their checksum.
    assert!(matches!(
        archive.get(key).await,
        Err(PortError::Permanent(_))
    ));

    // Different bytes under the same key replace the object.
    let newer = b"newer snapshot".to_vec();
    archive.put(key, &newer, &sha256(&newer)).await.unwrap();
    assert_eq!(archive.get(key).await.unwrap(), Some(newer));
}

#[tokio::test]
async fn getting_a_missing_key_returns_none() {
    let aws = TestAws::new().await;
    assert_eq!(
        aws.archive().get("projects/nothing-here").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_sha256_that_does_not_match_the_bytes_is_refused_and_nothing_is_stored() {
    let aws = TestAws::new().await;
    let archive = aws.archive();
    let err = archive.put("k", b"abc", &sha256(b"abd")).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert_eq!(archive.get("k").await.unwrap(), None);
}
