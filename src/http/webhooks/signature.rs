//! Monime's webhook signature: `Monime-Signature: t=<unix seconds>,v1=<base64 HMAC-SHA256>`
//! over `<t>_<raw body>`, keyed with a secret's UTF-8 bytes. Checked before the body is parsed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

pub const SIGNATURE_HEADER: &str = "monime-signature";
/// How far a signature's timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Monime-Signature header")]
    Missing,
    #[error("malformed Monime-Signature header: {0}")]
    Malformed(&'static str),
    #[error("signature timestamp is outside the {TOLERANCE_SECS} s window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// The secrets signatures are checked against: several during a rotation.
pub struct WebhookSecrets {
    keys: Vec<HmacSha256>,
}

#[derive(Debug, thiserror::Error)]
#[error("at least one non-empty webhook secret is required")]
pub struct NoSecrets;

impl WebhookSecrets {
    pub fn new(secrets: Vec<Secret>) -> Result<Self, NoSecrets> {
        let keys: Vec<HmacSha256> = secrets
            .iter()
            .filter(|s| !s.expose().is_empty())
            .map(|s| {
                HmacSha256::new_from_slice(s.expose().as_bytes()).expect("HMAC takes any key size")
            })
            .collect();
        if keys.is_empty() {
            return Err(NoSecrets);
        }
        Ok(WebhookSecrets { keys })
    }

    /// Checks `header` against `body` at time `now` (unix seconds).
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let parsed = ParsedHeader::parse(header)?;
        if (now - parsed.timestamp).abs() > TOLERANCE_SECS {
            return Err(SignatureError::Stale);
        }
        for signature in &parsed.signatures {
            for key in &self.keys {
                let mut mac = key.clone();
                mac.update(parsed.timestamp_text.as_bytes());
                mac.update(b"_");
                mac.update(body);
                // `verify_slice` compares in constant time.
                if mac.verify_slice(signature).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets({} redacted)", self.keys.len())
    }
}

struct ParsedHeader<'a> {
    timestamp: i64,
    timestamp_text: &'a str,
    signatures: Vec<Vec<u8>>,
}

impl<'a> ParsedHeader<'a> {
    fn parse(header: &'a str) -> Result<Self, SignatureError> {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed("expected key=value pairs"))?;
            match key.trim() {
                "t" => {
                    let text = value.trim();
                    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(SignatureError::Malformed("t is not a unix timestamp"));
                    }
                    let secs = text
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not a unix timestamp"))?;
                    timestamp = Some((secs, text));
                }
                "v1" => {
                    let raw = STANDARD
                        .decode(value.trim())
                        .map_err(|_| SignatureError::Malformed("v1 is not base64"))?;
                    signatures.push(raw);
                }
                // Other schemes may appear in future; they are not ours to check.
                _ => {}
            }
        }
        let (timestamp, timestamp_text) = timestamp.ok_or(SignatureError::Malformed("no t="))?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed("no v1="));
        }
        Ok(ParsedHeader {
            timestamp,
            timestamp_text,
            signatures,
        })
    }
}

/// Signs `body` at `timestamp` with `secret`, as Monime does: the header value. For the
/// load generator and the sandbox; tests compute their vectors independently.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"_");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> WebhookSecrets {
        WebhookSecrets::new(list.iter().map(|s| Secret::new(*s)).collect()).unwrap()
    }

    #[test]
    fn verify_accepts_own_signature_and_rejects_changes() {
        let s = secrets(&["old", "new"]);
        let header = sign("new", 1_000, b"{}");
        assert_eq!(s.verify(Some(&header), b"{}", 1_000), Ok(()));
        assert_eq!(
            s.verify(Some(&header), b"{ }", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(Some(&header), b"{}", 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(s.verify(Some(&header), b"{}", 1_300), Ok(()));
        assert_eq!(s.verify(None, b"{}", 1_000), Err(SignatureError::Missing));
        assert!(matches!(
            s.verify(Some("t=1,v1=!!"), b"{}", 1),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            s.verify(Some("v1=AAAA"), b"{}", 1),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn empty_secret_lists_are_refused() {
        assert!(WebhookSecrets::new(vec![Secret::new("")]).is_err());
    }
}
