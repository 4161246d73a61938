//! Signed envelopes: DSSE (the in-toto / Sigstore envelope) over Ed25519.
//!
//! The signature covers `PAE(payloadType, payload)`, the pre-authentication
//! encoding, so the type of a document is signed together with its bytes.
//! Verification works on the exact payload bytes and only afterwards are they
//! parsed ([`Envelope::open`]); nothing is ever re-serialised to be verified.
//! A key id is the lower-case hex SHA-256 of the raw 32-byte public key.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A DSSE envelope as it travels in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 (standard alphabet, padded) of the signed payload bytes.
    pub payload: String,
    pub signatures: Vec<Signature>,
}

/// One signature inside an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Signature {
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// Why an envelope was not accepted. Each variant is a distinct, reportable
/// reason; none of them means the payload was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("envelope is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("envelope is not valid DSSE JSON: {0}")]
    Malformed(String),
    #[error("payload type is {found:?}, expected {expected:?}")]
    WrongType { found: String, expected: String },
    #[error("no signature by key {0}")]
    UnknownKey(KeyId),
    #[error("signature by key {0} does not verify")]
    BadSignature(KeyId),
    #[error("signed payload does not parse: {0}")]
    BadPayload(String),
    #[error("the envelope carries no signature")]
    Unsigned,
    #[error("{valid} valid signature(s) by distinct listed keys, {threshold} required")]
    Threshold { valid: usize, threshold: usize },
}

/// The pre-authentication encoding DSSE signs:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The id of a public key: hex SHA-256 of its raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 public key; base64 of its 32 raw bytes in JSON and config files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        KeyId(hex::encode(digest.as_ref()))
    }

    /// Parses the base64 form written by [`fmt::Display`].
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| format!("public key is not base64: {e}"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("public key must be 32 bytes, got {}", b.len()))?;
        Ok(Self(raw))
    }

    /// Verifies one message signed by this key.
    fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// Why key material could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// An Ed25519 private key, held as a ring key pair. Stored as PKCS#8 v2.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.key_id())
    }
}

impl SigningKey {
    /// Generates a fresh key from the operating system's random source and
    /// returns it with its PKCS#8 encoding, which the caller persists.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError("the system random source failed".into()))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Loads a key from its PKCS#8 encoding.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| KeyError(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let raw: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError("unexpected public key length".into()))?;
        Ok(Self {
            pair,
            public: PublicKey(raw),
        })
    }

    /// A key from a fixed 32-byte seed: the published schemas' examples
    /// are signed with such keys, so they are the same at every build.
    #[cfg(feature = "schema")]
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| KeyError(format!("not an Ed25519 seed: {e}")))?;
        let raw: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError("unexpected public key length".into()))?;
        Ok(Self {
            pair,
            public: PublicKey(raw),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs `payload` as a document of `payload_type`.
    pub fn sign(&self, payload_type: &str, payload: &[u8]) -> Envelope {
        let sig = self.pair.sign(&pae(payload_type, payload));
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: B64.encode(payload),
            signatures: vec![Signature {
                keyid: self.key_id().0,
                sig: B64.encode(sig.as_ref()),
            }],
        }
    }

    /// Serialises `document` to JSON and signs it; returns the envelope's JSON bytes.
    pub fn sign_json<T: Serialize>(&self, payload_type: &str, document: &T) -> Vec<u8> {
        // Serialising plain data structs to a Vec cannot fail.
        let payload = serde_json::to_vec(document).unwrap_or_default();
        serde_json::to_vec(&self.sign(payload_type, &payload)).unwrap_or_default()
    }
}

impl Envelope {
    /// Parses envelope JSON, refusing input over `limit` bytes before reading it.
    pub fn parse(bytes: &[u8], limit: usize) -> Result<Self, VerifyError> {
        if bytes.len() > limit {
            return Err(VerifyError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))
    }

    /// Checks the payload type and `key`'s signature over the exact payload
    /// bytes, and returns those bytes. Signatures by other keys are ignored.
    pub fn verify(&self, expected_type: &str, key: &PublicKey) -> Result<Vec<u8>, VerifyError> {
        self.verify_any(expected_type, std::slice::from_ref(key))
            .map(|(payload, _)| payload)
    }

    /// The SHA-256 of the signed bytes, `PAE(payloadType, payload)`: the
    /// identity of a signed document, independent of how its JSON is laid
    /// out and of how many signatures it carries.
    pub fn signed_digest(&self) -> Result<crate::digest::Sha256Digest, VerifyError> {
        let payload = self.payload_bytes()?;
        Ok(crate::digest::Sha256Digest::of(&pae(
            &self.payload_type,
            &payload,
        )))
    }

    fn payload_bytes(&self) -> Result<Vec<u8>, VerifyError> {
        B64.decode(&self.payload)
            .map_err(|e| VerifyError::Malformed(format!("payload is not base64: {e}")))
    }

    fn check_type(&self, expected_type: &str) -> Result<(), VerifyError> {
        if self.payload_type == expected_type {
            Ok(())
        } else {
            Err(VerifyError::WrongType {
                found: self.payload_type.chars().take(128).collect(),
                expected: expected_type.to_owned(),
            })
        }
    }

    /// Checks that a signature by one of `keys` verifies and returns the
    /// payload bytes with the key that signed them. The error names the
    /// first problem: no signature at all, none by a listed key, or a listed
    /// key whose signature does not verify.
    pub fn verify_any(
        &self,
        expected_type: &str,
        keys: &[PublicKey],
    ) -> Result<(Vec<u8>, PublicKey), VerifyError> {
        self.check_type(expected_type)?;
        if self.signatures.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        let payload = self.payload_bytes()?;
        let message = pae(expected_type, &payload);
        let mut bad = None;
        for key in keys {
            let id = key.key_id();
            for signature in self.signatures.iter().filter(|s| s.keyid == id.0) {
                match B64.decode(&signature.sig) {
                    Ok(sig) if key.verify_raw(&message, &sig) => return Ok((payload, *key)),
                    _ => bad = Some(id.clone()),
                }
            }
        }
        Err(match bad {
            Some(id) => VerifyError::BadSignature(id),
            None => {
                VerifyError::UnknownKey(KeyId(self.signatures[0].keyid.chars().take(64).collect()))
            }
        })
    }

    /// Checks that at least `threshold` distinct keys of `keys` signed the
    /// envelope; returns the payload bytes. Signatures by other keys, bad
    /// signatures and repeats of one key do not count.
    pub fn verify_threshold(
        &self,
        expected_type: &str,
        keys: &[PublicKey],
        threshold: usize,
    ) -> Result<Vec<u8>, VerifyError> {
        self.check_type(expected_type)?;
        let payload = self.payload_bytes()?;
        let message = pae(expected_type, &payload);
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            let id = key.key_id();
            let signed = self.signatures.iter().any(|s| {
                s.keyid == id.0
                    && B64
                        .decode(&s.sig)
                        .is_ok_and(|sig| key.verify_raw(&message, &sig))
            });
            if signed {
                seen.insert(id);
            }
        }
        if threshold > 0 && seen.len() >= threshold {
            Ok(payload)
        } else {
            Err(VerifyError::Threshold {
                valid: seen.len(),
                threshold,
            })
        }
    }

    /// Adds `key`'s signature over the same payload (threshold signing:
    /// each offline key holder adds theirs). A key that already signed is
    /// not added twice.
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), VerifyError> {
        let payload = self.payload_bytes()?;
        let id = key.key_id();
        if self.signatures.iter().any(|s| s.keyid == id.0) {
            return Ok(());
        }
        let sig = key.pair.sign(&pae(&self.payload_type, &payload));
        self.signatures.push(Signature {
            keyid: id.0,
            sig: B64.encode(sig.as_ref()),
        });
        Ok(())
    }

    /// Verifies, then parses the payload as `T`.
    pub fn open<T: DeserializeOwned>(
        &self,
        expected_type: &str,
        key: &PublicKey,
    ) -> Result<T, VerifyError> {
        let payload = self.verify(expected_type, key)?;
        serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))
    }

    /// Verifies a signature by any of `keys`, then parses the payload as `T`.
    pub fn open_any<T: DeserializeOwned>(
        &self,
        expected_type: &str,
        keys: &[PublicKey],
    ) -> Result<T, VerifyError> {
        let (payload, _) = self.verify_any(expected_type, keys)?;
        serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))
    }

    /// The payload parsed as `T` **without** checking any signature.
    ///
    /// Only for bootstrapping trust, where the payload names the key that must
    /// then verify the very same envelope (first-contact key pinning).
    pub fn peek_unverified<T: DeserializeOwned>(&self) -> Result<T, VerifyError> {
        let payload = self.payload_bytes()?;
        serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "application/vnd.verge.test+json";

    fn key() -> SigningKey {
        SigningKey::generate().expect("key").0
    }

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn signed_envelope_verifies_and_round_trips_through_json() {
        let k = key();
        let bytes = serde_json::to_vec(&k.sign(T, b"{\"a\":1}")).expect("json");
        let env = Envelope::parse(&bytes, 1024).expect("parse");
        assert_eq!(
            env.verify(T, &k.public_key()).expect("verify"),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn pkcs8_reload_gives_the_same_key() {
        let (k, pkcs8) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pkcs8(&pkcs8).expect("reload");
        assert_eq!(k.public_key(), again.public_key());
        assert!(SigningKey::from_pkcs8(b"junk").is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let mut env = k.sign(T, b"{\"a\":1}");
        env.payload = B64.encode(b"{\"a\":2}");
        assert!(matches!(
            env.verify(T, &k.public_key()),
            Err(VerifyError::BadSignature(_))
        ));
    }

    #[test]
    fn type_is_bound_into_the_signature() {
        let k = key();
        let mut env = k.sign(T, b"x");
        assert!(matches!(
            env.verify("other", &k.public_key()),
            Err(VerifyError::WrongType { .. })
        ));
        // Relabelling the envelope does not help: the type is inside PAE.
        env.payload_type = "other".into();
        assert!(matches!(
            env.verify("other", &k.public_key()),
            Err(VerifyError::BadSignature(_))
        ));
    }

    #[test]
    fn another_key_is_unknown() {
        let env = key().sign(T, b"x");
        assert!(matches!(
            env.verify(T, &key().public_key()),
            Err(VerifyError::UnknownKey(_))
        ));
    }

    #[test]
    fn oversized_and_malformed_input_is_refused() {
        assert!(matches!(
            Envelope::parse(&[b' '; 100], 10),
            Err(VerifyError::TooLarge { size: 100, .. })
        ));
        assert!(matches!(
            Envelope::parse(b"{not json", 100),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn threshold_counts_distinct_valid_listed_keys() {
        let (a, b, c) = (key(), key(), key());
        let keys = [a.public_key(), b.public_key(), c.public_key()];
        let mut env = a.sign(T, b"x");
        assert_eq!(
            env.verify_threshold(T, &keys, 2),
            Err(VerifyError::Threshold {
                valid: 1,
                threshold: 2
            })
        );
        // The same key twice is still one key.
        let again = env.signatures[0].clone();
        env.signatures.push(again);
        assert!(env.verify_threshold(T, &keys, 2).is_err());
        // A signature by an unlisted key does not count.
        env.add_signature(&key()).expect("sign");
        assert!(env.verify_threshold(T, &keys, 2).is_err());
        env.add_signature(&b).expect("sign");
        assert_eq!(env.verify_threshold(T, &keys, 2).expect("2 of 3"), b"x");
        // Tampering invalidates every signature.
        env.payload = B64.encode(b"y");
        assert!(env.verify_threshold(T, &keys, 1).is_err());
        assert!(
            env.verify_threshold(T, &keys, 0).is_err(),
            "0 is never enough"
        );
    }

    #[test]
    fn any_of_several_keys_and_the_reasons_when_none() {
        let (a, b) = (key(), key());
        let env = b.sign(T, b"x");
        let (payload, by) = env
            .verify_any(T, &[a.public_key(), b.public_key()])
            .expect("b signed");
        assert_eq!((payload.as_slice(), by), (&b"x"[..], b.public_key()));
        assert!(matches!(
            env.verify_any(T, &[a.public_key()]),
            Err(VerifyError::UnknownKey(_))
        ));
        let mut unsigned = env.clone();
        unsigned.signatures.clear();
        assert_eq!(
            unsigned.verify_any(T, &[b.public_key()]),
            Err(VerifyError::Unsigned)
        );
        let mut forged = env.clone();
        forged.payload = B64.encode(b"y");
        assert!(matches!(
            forged.verify_any(T, &[b.public_key()]),
            Err(VerifyError::BadSignature(_))
        ));
    }

    #[test]
    fn signed_digest_ignores_signatures_but_not_content() {
        let (a, b) = (key(), key());
        let mut env = a.sign(T, b"x");
        let digest = env.signed_digest().expect("digest");
        env.add_signature(&b).expect("sign");
        assert_eq!(env.signed_digest().expect("digest"), digest);
        assert_ne!(b.sign(T, b"y").signed_digest().expect("digest"), digest);
        assert_ne!(
            b.sign("other", b"x").signed_digest().expect("digest"),
            digest
        );
    }

    #[test]
    fn public_key_text_form_round_trips() {
        let p = key().public_key();
        assert_eq!(PublicKey::from_base64(&p.to_string()).expect("parse"), p);
        assert!(PublicKey::from_base64("AAAA").is_err());
    }

    #[test]
    fn an_envelope_of_exactly_the_limit_is_read() {
        let bytes = serde_json::to_vec(&key().sign(T, b"x")).expect("json");
        let env = Envelope::parse(&bytes, bytes.len()).expect("at the limit");
        assert_eq!(env.payload, B64.encode(b"x"));
        assert!(matches!(
            Envelope::parse(&bytes, bytes.len() - 1),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_key_id_is_the_hex_sha256_of_the_raw_public_key() {
        let k = key();
        let p = k.public_key();
        let expected = crate::digest::Sha256Digest::of(p.as_bytes()).to_string();
        assert_eq!(expected.len(), 64);
        assert_eq!(p.key_id().as_str(), expected);
        assert_eq!(p.key_id().to_string(), expected);
        assert_eq!(k.key_id(), p.key_id());
        assert_eq!(PublicKey::from_bytes(*p.as_bytes()), p);
        assert_eq!(k.sign(T, b"x").signatures[0].keyid, expected);
    }

    #[test]
    fn debug_output_names_keys_by_their_public_parts_only() {
        let (k, pkcs8) = SigningKey::generate().expect("key");
        let shown = format!("{k:?}");
        assert_eq!(shown, format!("SigningKey({})", k.key_id()));
        assert!(!shown.contains(&B64.encode(pkcs8.as_slice())));
        let p = k.public_key();
        assert_eq!(format!("{p:?}"), format!("PublicKey({p})"));
    }

    #[test]
    fn sign_json_signs_the_documents_json() {
        let k = key();
        let bytes = k.sign_json(T, &serde_json::json!({"a": 1}));
        let env = Envelope::parse(&bytes, 4096).expect("envelope");
        let doc: serde_json::Value = env.open(T, &k.public_key()).expect("opens");
        assert_eq!(doc, serde_json::json!({"a": 1}));
        let doc: serde_json::Value = env.open_any(T, &[k.public_key()]).expect("opens");
        assert_eq!(doc, serde_json::json!({"a": 1}));
    }

    #[test]
    fn a_key_signs_an_envelope_once() {
        let (a, b) = (key(), key());
        let mut env = a.sign(T, b"x");
        env.add_signature(&a).expect("again");
        assert_eq!(env.signatures.len(), 1);
        env.add_signature(&b).expect("sign");
        env.add_signature(&b).expect("again");
        assert_eq!(env.signatures.len(), 2);
        assert_eq!(env.signatures[1].keyid, b.key_id().as_str());
        assert_eq!(
            env.verify(T, &b.public_key())
                .expect("b's signature verifies"),
            b"x"
        );
    }
}
