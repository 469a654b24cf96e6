//! Unit tests of `crypto`: sealing, signatures, digests and certificates.

use super::*;

fn test_box(byte: u8) -> SecretBox {
    SecretBox::new([byte; 32])
}

#[test]
fn seal_open_round_trip() {
    let b = test_box(7);
    let sealed = b.seal(b"-----BEGIN PRIVATE KEY----- secret");
    assert!(sealed.starts_with(&format!("v1:{}:", b.key_id())));
    assert_eq!(
        b.open(&sealed).unwrap(),
        b"-----BEGIN PRIVATE KEY----- secret"
    );
    assert_eq!(b.open(&b.seal(b"")).unwrap(), b"");
}

#[test]
fn key_id_is_sha256_prefix() {
    let b = test_box(0);
    assert_eq!(b.key_id(), &hex(&sha256(&[0u8; 32]))[..8]);
    assert_eq!(b.key_id().len(), 8);
}

#[test]
fn two_seals_differ() {
    let b = test_box(1);
    let a1 = b.seal(b"same");
    let a2 = b.seal(b"same");
    assert_ne!(a1, a2);
    assert_eq!(b.open(&a1).unwrap(), b.open(&a2).unwrap());
}

#[test]
fn wrong_key_is_named() {
    let sealed = test_box(1).seal(b"x");
    let other = test_box(2);
    let err = other.open(&sealed).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CryptoError::WrongKey { .. }), "{msg}");
    assert_eq!(
        msg,
        format!(
            "sealed with key {}, configured key is {}",
            test_box(1).key_id(),
            other.key_id()
        )
    );
    assert_eq!(sealed_key_id(&sealed), Some(test_box(1).key_id()));
}

#[test]
fn tampered_ciphertext_fails_authentication() {
    let b = test_box(3);
    let sealed = b.seal(b"attack at dawn");
    let (head, body) = sealed.rsplit_once(':').unwrap();
    let mut raw = BASE64.decode(body).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    let tampered = format!("{head}:{}", BASE64.encode(&raw));
    assert!(matches!(b.open(&tampered), Err(CryptoError::Decrypt)));
    // Same key id but a different key (collision of the id is what this simulates).
    raw[last] ^= 0x01;
    raw[NONCE_LEN] ^= 0x80;
    let tampered = format!("{head}:{}", BASE64.encode(&raw));
    assert!(matches!(b.open(&tampered), Err(CryptoError::Decrypt)));
}

#[test]
fn bad_formats() {
    let b = test_box(4);
    let id = b.key_id().to_owned();
    for bad in [
        String::new(),
        "garbage".into(),
        format!("v2:{id}:AAAA"),
        "v1:xyz:AAAA".into(),
        format!("v1:{id}:not base64!!"),
        format!("v1:{id}:AAAA"),
        format!("v1:{id}"),
    ] {
        let err = b.open(&bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::BadSealedFormat(_)),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(sealed_key_id("garbage"), None);
    assert_eq!(sealed_key_id("v1:zzzzzzzz:x"), None);
}

#[test]
fn no_secret_in_debug_or_errors() {
    let b = SecretBox::new(*b"0123456789abcdef0123456789abcdef");
    let dbg = format!("{b:?}");
    assert!(dbg.contains(b.key_id()));
    assert!(!dbg.contains("0123456789abcdef"));
    let sealed = b.seal(b"topsecret");
    let err = test_box(9).open(&sealed).unwrap_err();
    assert!(!err.to_string().contains("topsecret"));
    assert!(!format!("{err:?}").contains("topsecret"));
}

#[test]
fn from_base64_key() {
    let b = SecretBox::from_base64(&BASE64.encode([5u8; 32])).unwrap();
    assert_eq!(b.key_id(), test_box(5).key_id());
    assert!(matches!(
        SecretBox::from_base64(&BASE64.encode([5u8; 16])),
        Err(CryptoError::InvalidKey(_))
    ));
    assert!(matches!(
        SecretBox::from_base64("%%%"),
        Err(CryptoError::InvalidKey(_))
    ));
}

// --- Ed25519 ---

fn spki_pem_by_prefix(public: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    der_to_pem("PUBLIC KEY", &der)
}

fn new_pkcs8() -> (String, Vec<u8>) {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(doc.as_ref()).unwrap();
    (
        der_to_pem("PRIVATE KEY", doc.as_ref()),
        pair.public_key().as_ref().to_vec(),
    )
}

#[test]
fn ed25519_sign_verify() {
    let (pkcs8, public) = new_pkcs8();
    let key = parse_ed25519_public_key(&spki_pem_by_prefix(&public)).unwrap();
    assert_eq!(key.as_slice(), public.as_slice());
    assert_eq!(ed25519_public_key_pem(&key), spki_pem_by_prefix(&public));
    let digest = sha256(b"bundle bytes");
    let sig = sign_bundle_digest(&pkcs8, &digest).unwrap();
    assert_eq!(sig.len(), 64);
    verify_bundle_signature(&key, &digest, &sig).unwrap();
    // Another digest does not verify.
    let other = sha256(b"other bundle");
    assert!(matches!(
        verify_bundle_signature(&key, &other, &sig),
        Err(CryptoError::BadSignature)
    ));
}

#[test]
fn ed25519_wrong_key_and_bad_signature() {
    let (pkcs8, _) = new_pkcs8();
    let (_, other_public) = new_pkcs8();
    let other: [u8; 32] = other_public.try_into().unwrap();
    let digest = sha256(b"bundle");
    let sig = sign_bundle_digest(&pkcs8, &digest).unwrap();
    assert!(matches!(
        verify_bundle_signature(&other, &digest, &sig),
        Err(CryptoError::BadSignature)
    ));
    let (gen_pem, gen_public) = generate_ed25519_key().unwrap();
    let mut sig = sign_bundle_digest(&gen_pem, &digest).unwrap();
    verify_bundle_signature(&gen_public, &digest, &sig).unwrap();
    sig[10] ^= 0xff;
    assert!(verify_bundle_signature(&gen_public, &digest, &sig).is_err());
    assert!(verify_bundle_signature(&gen_public, &digest, &sig[..63]).is_err());
    assert!(verify_bundle_signature(&gen_public, &digest, b"").is_err());
}

#[test]
fn ed25519_public_key_formats() {
    let (_, public) = new_pkcs8();
    // Base64 of the raw 32 bytes, with surrounding whitespace.
    let b64 = format!("  {}\n", BASE64.encode(&public));
    assert_eq!(
        parse_ed25519_public_key(&b64).unwrap().as_slice(),
        &public[..]
    );
    // Base64 of the SPKI DER.
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(&public);
    assert_eq!(
        parse_ed25519_public_key(&BASE64.encode(&der))
            .unwrap()
            .as_slice(),
        &public[..]
    );
    // Wrong lengths, garbage, empty.
    for bad in [
        BASE64.encode([1u8; 31]),
        "not base64 at all!".into(),
        String::new(),
    ] {
        assert!(matches!(
            parse_ed25519_public_key(&bad),
            Err(CryptoError::InvalidPublicKey(_))
        ));
    }
    // A P-256 public key in PEM is rejected as "not ed25519".
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let err = parse_ed25519_public_key(&ec.public_key_pem()).unwrap_err();
    assert!(err.to_string().contains("not an ed25519"), "{err}");
    // A PEM without a PUBLIC KEY block.
    let err =
        parse_ed25519_public_key("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
    assert!(matches!(err, CryptoError::InvalidPublicKey(_)), "{err}");
}

#[test]
fn signing_key_errors() {
    let digest = [0u8; 32];
    assert!(matches!(
        sign_bundle_digest("nothing here", &digest),
        Err(CryptoError::InvalidSigningKey(_))
    ));
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(matches!(
        sign_bundle_digest(&ec.serialize_pem(), &digest),
        Err(CryptoError::InvalidSigningKey(_))
    ));
}

// --- hashing ---

#[test]
fn sha256_and_hex() {
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let mut h = Sha256Hasher::new();
    h.update(b"a");
    h.update(b"bc");
    assert_eq!(h.finish(), sha256(b"abc"));
    assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
}

#[test]
fn digest_format_round_trip() {
    let d = sha256(b"x");
    let s = format_digest(&d);
    assert!(s.starts_with("sha256:"));
    assert_eq!(s.len(), 7 + 64);
    assert_eq!(s.parse::<Digest>().unwrap(), Digest::from(d));
    assert_eq!(
        s.to_uppercase()
            .replace("SHA256", "sha256")
            .parse::<Digest>()
            .unwrap(),
        Digest::from(d)
    );
    assert_eq!(Digest::from(d).to_string(), s);
    for bad in [
        "",
        "sha256:",
        "sha512:00",
        &s[7..],
        &s[..s.len() - 1],
        &format!("{s}0"),
        &s.replace('a', "g"),
    ] {
        if bad == s {
            continue;
        }
        assert!(
            matches!(bad.parse::<Digest>(), Err(CryptoError::InvalidDigest(_))),
            "{bad}"
        );
    }
    assert!(parse_hex32(&"zz".repeat(32)).is_err());
}

// --- certificates ---

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn certificate_parse_ok() {
    let (cert, key) =
        self_signed(&names(&["Example.COM", "www.example.com", "127.0.0.1"]), 30).unwrap();
    let parsed = parse_certificate_and_key(&cert, &key).unwrap();
    assert_eq!(parsed.domains, names(&["example.com", "www.example.com"]));
    let now = now_unix_ms();
    assert!(parsed.not_before <= now);
    assert!(parsed.not_after > now + 29 * 86_400_000);
    assert!(parsed.not_after <= now + 31 * 86_400_000);
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(parsed.fingerprint, format_digest(&sha256(der.as_ref())));
    assert_eq!(
        CertificateDer::from_pem_slice(parsed.chain_pem.as_bytes()).unwrap(),
        der
    );
    assert!(
        parsed
            .chain_pem
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
}

#[test]
fn certificate_chain_is_kept_in_order() {
    let (leaf, key) = self_signed(&names(&["a.example"]), 5).unwrap();
    let (other, _) = self_signed(&names(&["ca.example"]), 5).unwrap();
    // Windows line endings and leading junk are tolerated; output is normalised.
    let input = format!("junk\r\n{}{}", leaf.replace('\n', "\r\n"), other);
    let parsed = parse_certificate_and_key(&input, &key).unwrap();
    let ders: Vec<_> = CertificateDer::pem_slice_iter(parsed.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ders.len(), 2);
    assert_eq!(
        ders[0],
        CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap()
    );
    assert_eq!(
        ders[1],
        CertificateDer::from_pem_slice(other.as_bytes()).unwrap()
    );
    assert!(!parsed.chain_pem.contains('\r'));
}

#[test]
fn certificate_cn_fallback() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CN.Example.org");
    let cert = params.self_signed(&key).unwrap();
    let parsed = parse_certificate_and_key(&cert.pem(), &key.serialize_pem()).unwrap();
    assert_eq!(parsed.domains, names(&["cn.example.org"]));
}

#[test]
fn certificate_key_mismatch() {
    let (cert_a, _) = self_signed(&names(&["a.example"]), 5).unwrap();
    let (_, key_b) = self_signed(&names(&["b.example"]), 5).unwrap();
    let err = parse_certificate_and_key(&cert_a, &key_b).unwrap_err();
    assert!(matches!(err, CryptoError::KeyMismatch), "{err}");
    assert_eq!(
        err.to_string(),
        "private key does not match the certificate"
    );
}

#[test]
fn certificate_expired() {
    let now = now_unix_ms() / 1000;
    let (cert, key) =
        self_signed_between(&names(&["old.example"]), now - 10 * 86_400, now - 86_400).unwrap();
    let err = parse_certificate_and_key(&cert, &key).unwrap_err();
    assert!(matches!(err, CryptoError::Expired { .. }), "{err}");
    assert!(
        err.to_string().starts_with("certificate expired at "),
        "{err}"
    );
    // Not yet valid is reported through the dates, not as an error.
    let (cert, key) =
        self_signed_between(&names(&["new.example"]), now + 86_400, now + 10 * 86_400).unwrap();
    let parsed = parse_certificate_and_key(&cert, &key).unwrap();
    assert!(parsed.not_before > now_unix_ms());
}

#[test]
fn certificate_garbage_and_missing_parts() {
    let (cert, key) = self_signed(&names(&["a.example"]), 5).unwrap();
    assert!(matches!(
        parse_certificate_and_key("garbage", &key),
        Err(CryptoError::NoCertificate)
    ));
    assert!(matches!(
        parse_certificate_and_key(&key, &key),
        Err(CryptoError::NoCertificate)
    ));
    let bad_der = der_to_pem("CERTIFICATE", b"this is not der");
    let err = parse_certificate_and_key(&bad_der, &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::UnparseableCertificate { index: 0, .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("unparseable certificate: "),
        "{err}"
    );
    let err = parse_certificate_and_key(&format!("{cert}{bad_der}"), &key).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unparseable certificate #2 in chain"),
        "{err}"
    );
    let broken = "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        parse_certificate_and_key(broken, &key),
        Err(CryptoError::InvalidCertificatePem(_))
    ));
    assert!(matches!(
        parse_certificate_and_key(&cert, "garbage"),
        Err(CryptoError::NoPrivateKey)
    ));
    assert!(matches!(
        parse_certificate_and_key(&cert, &cert),
        Err(CryptoError::NoPrivateKey)
    ));
    let bad_key = der_to_pem("PRIVATE KEY", b"secret-looking junk");
    let err = parse_certificate_and_key(&cert, &bad_key).unwrap_err();
    assert!(matches!(err, CryptoError::UnsupportedKey(_)), "{err}");
    assert!(!err.to_string().contains("secret-looking"));
    assert!(matches!(self_signed(&[], 1), Err(CryptoError::Generate(_))));
}

#[test]
fn ed25519_key_certificates_work() {
    // Ed25519 TLS keys go through the same SPKI comparison.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = rcgen::CertificateParams::new(names(&["ed.example"])).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let parsed = parse_certificate_and_key(&cert.pem(), &key.serialize_pem()).unwrap();
    assert_eq!(parsed.domains, names(&["ed.example"]));
}
