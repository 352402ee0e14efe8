//! What an access token says about whose it is, for `doctor`.
//!
//! An Entra access token is a JWT; its middle part is base64url JSON. The claims that tell a
//! misconfiguration apart are read without verifying anything (the token goes only to Azure DevOps,
//! which verifies it): the object id (`oid`, the id to add to the organization and the pool), the
//! tenant (`tid`), the application (`appid`/`azp`), the audience (`aud`, must be Azure DevOps) and
//! the expiry (`exp`). A PAT is not a JWT and has none. Nothing here prints the token.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    #[serde(default, alias = "azp", skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// A user's sign-in name (an `az login` as a person).
    #[serde(
        default,
        alias = "unique_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub upn: Option<String>,
}

impl Claims {
    /// Whether the audience is Azure DevOps (its application id, or the old resource URI).
    pub fn for_azure_devops(&self) -> bool {
        self.aud.as_deref().is_some_and(|a| {
            let a = a.trim_end_matches('/');
            a.eq_ignore_ascii_case(super::AZURE_DEVOPS_RESOURCE)
                || a.eq_ignore_ascii_case("https://app.vssps.visualstudio.com")
        })
    }
}

/// The claims of a JWT, or `None` for anything else (a PAT).
pub fn decode(token: &Secret) -> Option<Claims> {
    let mut parts = token.expose().split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> Secret {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        Secret::new(format!("eyJhbGciOiJSUzI1NiJ9.{b}.c2ln"))
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let c = decode(&jwt(
            r#"{"aud":"499b84ac-1321-427f-aa17-267ca6975798","oid":"o-1","tid":"t-1","azp":"a-1","exp":1900000000,"idtyp":"app"}"#,
        ))
        .unwrap();
        assert_eq!(c.oid.as_deref(), Some("o-1"));
        assert_eq!(c.appid.as_deref(), Some("a-1"));
        assert_eq!(c.exp, Some(1_900_000_000));
        assert!(c.for_azure_devops());
        let other = decode(&jwt(r#"{"aud":"https://management.azure.com/"}"#)).unwrap();
        assert!(!other.for_azure_devops());
    }

    #[test]
    fn a_pat_has_no_claims() {
        assert_eq!(
            decode(&Secret::new(
                "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop"
            )),
            None
        );
        assert_eq!(decode(&Secret::new("a.b.c")), None);
    }
}
