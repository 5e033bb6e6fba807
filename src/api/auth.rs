//! API keys: `Authorization: Bearer <key>` checked against `api.keys` in constant time, and
//! the organizations a key may see.
//!
//! Keys are kept as SHA-256 digests only, so the comparison takes the same time whatever the
//! length of the key sent and of the keys configured, and no key is ever held in a form that
//! could be printed. Nothing here logs.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::ApiKey;

/// What a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every organization (no keys configured, or a key without `organization_ids`).
    All,
    /// Only rows whose `organization_id` is one of these.
    Organizations(Arc<[String]>),
}

impl Scope {
    /// The organizations, if limited.
    pub fn organizations(&self) -> Option<&[String]> {
        match self {
            Scope::All => None,
            Scope::Organizations(ids) => Some(ids),
        }
    }
}

/// The configured keys.
#[derive(Clone)]
pub struct Keys {
    keys: Arc<[([u8; 32], Scope)]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("count", &self.keys.len())
            .finish()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Keys {
    /// The keys of `api.keys`.
    pub fn new(keys: &[ApiKey]) -> Keys {
        Keys {
            keys: keys
                .iter()
                .map(|key| {
                    let scope = match &key.organization_ids {
                        None => Scope::All,
                        Some(ids) => Scope::Organizations(ids.clone().into()),
                    };
                    (digest(key.key.expose().as_bytes()), scope)
                })
                .collect(),
        }
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The scope of the request's key; 401 without a configured key. Every configured key
    /// is compared, whichever matches.
    pub fn check(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        if !self.enabled() {
            return Ok(Scope::All);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
            .ok_or(ApiError::Unauthorized)?;
        let presented = digest(presented);
        let mut found = None;
        for (index, (key, _)) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some(index);
            }
        }
        found
            .map(|index| self.keys[index].1.clone())
            .ok_or(ApiError::Unauthorized)
    }
}

/// The token of `Bearer <token>` (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_configured_bearer_keys_pass() {
        let keys = Keys::new(&[
            ApiKey {
                key: Secret::new("sk_one"),
                organization_ids: None,
            },
            ApiKey {
                key: Secret::new("sk_two"),
                organization_ids: Some(vec!["org_a".into()]),
            },
        ]);
        assert!(matches!(
            keys.check(&headers("Bearer sk_one")),
            Ok(Scope::All)
        ));
        let scope = keys.check(&headers("bearer sk_two")).unwrap();
        assert_eq!(scope.organizations().unwrap(), ["org_a".to_owned()]);
        for bad in [
            "Bearer sk_on",
            "Bearer sk_one2",
            "Basic sk_one",
            "sk_one",
            "Bearer ",
        ] {
            assert!(keys.check(&headers(bad)).is_err(), "{bad}");
        }
        assert!(keys.check(&HeaderMap::new()).is_err());
        assert!(!format!("{keys:?}").contains("sk_"));
        assert!(matches!(
            Keys::new(&[]).check(&HeaderMap::new()),
            Ok(Scope::All)
        ));
    }
}
