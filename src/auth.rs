//! Bearer tokens and TLS for the listeners.
//!
//! The API and dashboard, and the OTLP receivers, each take an optional
//! token: configured in the file, read from a file, or from an environment
//! variable (which wins). When one is set, requests without it are refused.
//! Both can serve TLS from PEM certificate and key files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a token or a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{section}: set token or token_file, not both")]
    Both { section: &'static str },
    #[error("{section}.token_file {path}: {source}")]
    TokenFile {
        section: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is empty: a token needs at least 16 characters")]
    Empty { what: String },
    #[error("{what} is too short ({len} characters): a token needs at least 16")]
    Short { what: String, len: usize },
    #[error("{section}: tls_cert and tls_key go together; set both or neither")]
    HalfTls { section: &'static str },
    #[error("{section}.{key} {path}: {message}")]
    Tls {
        section: &'static str,
        key: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// How a listener is protected: `token`/`token_file` and
/// `tls_cert`/`tls_key` keys, shared by `[web]` and `[ingest]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// The bearer token requests must carry. Prefer `token_file` or the
    /// environment variable: this one sits in the file in clear.
    pub token: String,
    /// A file holding the token (a Kubernetes secret mounted as a file,
    /// say); surrounding whitespace is ignored.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Shortest token accepted: a guessable token is worse than none, because
/// it makes exposing the listener look safe.
pub const MIN_TOKEN_LEN: usize = 16;

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

impl Token {
    pub fn new(secret: &str, what: impl Into<String>) -> Result<Self, AuthError> {
        let len = secret.chars().count();
        if len == 0 {
            return Err(AuthError::Empty { what: what.into() });
        }
        if len < MIN_TOKEN_LEN {
            return Err(AuthError::Short {
                what: what.into(),
                len,
            });
        }
        Ok(Self {
            digest: digest(secret.as_bytes()),
        })
    }

    /// Whether `presented` is the token. Both sides are hashed first, so the
    /// comparison takes the same time whatever the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        digest(presented).ct_eq(&self.digest).into()
    }

    /// Whether an `Authorization` header value is `Bearer <token>`.
    pub fn matches_header(&self, value: &[u8]) -> bool {
        let Some(scheme) = value.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && self.matches(value[7..].trim_ascii())
    }

    /// A session for a browser that presented the token at `issued_at`
    /// (Unix seconds): `issued_at.mac`, where the MAC is HMAC-SHA256 keyed
    /// by the token's digest. It proves the token was typed in, without
    /// holding it; it expires after [`SESSION_MAX_AGE`]; changing the token
    /// ends every session; and every replica sharing the token accepts it.
    pub fn session(&self, issued_at: u64) -> String {
        format!(
            "{issued_at}.{}",
            const_hex::encode(self.session_mac(issued_at))
        )
    }

    fn session_mac(&self, issued_at: u64) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.digest)
            .expect("HMAC takes a key of any length");
        mac.update(b"homeostat dashboard session\0");
        mac.update(issued_at.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `presented` is a session of this token, issued at most
    /// [`SESSION_MAX_AGE`] before `now` (Unix seconds).
    pub fn matches_session(&self, presented: &[u8], now: u64) -> bool {
        let Some((issued, mac)) = std::str::from_utf8(presented)
            .ok()
            .and_then(|p| p.split_once('.'))
        else {
            return false;
        };
        let (Ok(issued_at), Ok(mac)) = (issued.parse::<u64>(), const_hex::decode(mac)) else {
            return false;
        };
        let fresh = issued_at <= now + 60 && now - issued_at.min(now) <= SESSION_MAX_AGE.as_secs();
        fresh && bool::from(mac.ct_eq(&self.session_mac(issued_at)))
    }
}

/// How long a dashboard session lasts before the token is asked again.
pub const SESSION_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

impl Access {
    /// The token, if any: the environment variable `env` when set and not
    /// empty, else `token_file`, else `token`.
    pub fn token(
        &self,
        section: &'static str,
        env: &'static str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Token>, AuthError> {
        if let Some(value) = var(env).filter(|v| !v.is_empty()) {
            return Token::new(value.trim(), format!("the environment variable {env}")).map(Some);
        }
        match (&self.token_file, self.token.is_empty()) {
            (Some(_), false) => Err(AuthError::Both { section }),
            (Some(path), true) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
                        section,
                        path: path.clone(),
                        source,
                    })?;
                Token::new(
                    text.trim(),
                    format!("{section}.token_file {}", path.display()),
                )
                .map(Some)
            }
            (None, false) => Token::new(self.token.trim(), format!("{section}.token")).map(Some),
            (None, true) => Ok(None),
        }
    }

    /// The TLS server configuration, if `tls_cert` and `tls_key` are set.
    pub fn tls(
        &self,
        section: &'static str,
        alpn: &[&[u8]],
    ) -> Result<Option<Arc<rustls::ServerConfig>>, AuthError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            _ => return Err(AuthError::HalfTls { section }),
        };
        let (certs, key) = load_pem(section, cert, key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| AuthError::Tls {
            section,
            key: "tls_key",
            path: self.tls_key.clone().unwrap_or_default(),
            message: match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("is not the key of tls_cert: {e}")
                }
                e => format!("cannot be used: {e}"),
            },
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(Arc::new(config)))
    }

    /// The PEM files as they are, for servers that parse them themselves.
    pub fn tls_pem(&self, section: &'static str) -> Result<Option<PemFiles>, AuthError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            _ => return Err(AuthError::HalfTls { section }),
        };
        load_pem(section, cert, key)?;
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| AuthError::Tls {
                section,
                key,
                path: path.to_owned(),
                message: e.to_string(),
            })
        };
        Ok(Some((read("tls_cert", cert)?, read("tls_key", key)?)))
    }
}

/// A certificate chain's and a key's PEM text.
pub type PemFiles = (Vec<u8>, Vec<u8>);

type Pem = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Reads and checks a certificate chain and its key.
fn load_pem(section: &'static str, cert: &Path, key: &Path) -> Result<Pem, AuthError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let error = |key: &'static str, path: &Path, message: String| AuthError::Tls {
        section,
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error("tls_cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(error(
            "tls_cert",
            cert,
            "holds no PEM certificate".to_owned(),
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| error("tls_key", key, e.to_string()))?;
    Ok((certs, private))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_environment_wins_then_the_file_then_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let access = Access {
            token_file: Some(file.clone()),
            ..Access::default()
        };
        let t = access.token("web", "X", no_env).unwrap().unwrap();
        assert!(t.matches(b"from-the-file-0123456789"));
        let env = |_: &str| Some("from-the-environment-0123".to_owned());
        let t = access.token("web", "X", env).unwrap().unwrap();
        assert!(t.matches(b"from-the-environment-0123"));
        assert!(!t.matches(b"from-the-file-0123456789"));
        let inline = Access {
            token: "in-the-config-0123456789".into(),
            ..Access::default()
        };
        let t = inline.token("web", "X", no_env).unwrap().unwrap();
        assert!(t.matches_header(b"Bearer in-the-config-0123456789"));
        assert!(t.matches_header(b"bearer  in-the-config-0123456789 "));
        assert!(!t.matches_header(b"Basic in-the-config-0123456789"));
        assert!(!t.matches_header(b"Bearer in-the-config-012345678"));
        assert!(!t.matches_header(b"Bear"));
        assert!(
            Access::default()
                .token("web", "X", no_env)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_tokens_are_named() {
        let both = Access {
            token: "a".repeat(20),
            token_file: Some("/nonexistent".into()),
            ..Access::default()
        };
        assert_eq!(
            both.token("web", "X", no_env).unwrap_err().to_string(),
            "web: set token or token_file, not both"
        );
        let short = Access {
            token: "secret".into(),
            ..Access::default()
        };
        assert_eq!(
            short.token("web", "X", no_env).unwrap_err().to_string(),
            "web.token is too short (6 characters): a token needs at least 16"
        );
        let missing = Access {
            token_file: Some("/nonexistent/token".into()),
            ..Access::default()
        };
        let err = missing
            .token("ingest", "X", no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ingest.token_file /nonexistent/token: "),
            "{err}"
        );
        let half = Access {
            tls_cert: Some("c.pem".into()),
            ..Access::default()
        };
        assert!(matches!(
            half.tls("web", &[]),
            Err(AuthError::HalfTls { section: "web" })
        ));
    }

    #[test]
    fn sessions_stand_for_the_token_without_being_it_and_expire() {
        let t = Token::new("the-token-0123456789", "t").unwrap();
        let now = 1_800_000_000;
        let s = t.session(now);
        assert!(!s.contains("the-token"));
        assert!(t.matches_session(s.as_bytes(), now));
        let max = SESSION_MAX_AGE.as_secs();
        assert!(t.matches_session(s.as_bytes(), now + max));
        assert!(!t.matches_session(s.as_bytes(), now + max + 1), "expired");
        let other = Token::new("another-token-0123456789", "t").unwrap();
        assert!(!other.matches_session(s.as_bytes(), now), "another token");
        // The time is under the MAC: moving it forward breaks it.
        let (_, mac) = s.split_once('.').unwrap();
        let moved = format!("{}.{mac}", now + max);
        assert!(!t.matches_session(moved.as_bytes(), now + max + 10));
        for junk in ["", ".", "x.y", "1800000000.zz", "1800000000"] {
            assert!(!t.matches_session(junk.as_bytes(), now), "{junk:?}");
        }
    }
}
