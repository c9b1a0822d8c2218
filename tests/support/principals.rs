//! The one principal set every test server knows, in process or as a
//! child, and the credentials its clients send.

use case_export::client::ClientOptions;
use case_export::server::{ON_BEHALF_OF, PrincipalConfig, Role};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The suite's own calling service: exporter and auditor. Its token is the
/// one test clients send unless a test says otherwise.
pub const SERVICE: &str = "test-service";
/// Bearer token of [`SERVICE`]; servers store only its digest.
pub const TOKEN: &str = "cxt_test-token-for-the-integration-suite-only";
/// An auditor that may not export.
pub const AUDITOR: &str = "auditor-only";
pub const AUDITOR_TOKEN: &str = "auditor-only-token-3b1f0c";
/// An exporter that may not read the trail.
pub const EXPORTER: &str = "exporter-only";
pub const EXPORTER_TOKEN: &str = "exporter-only-token-9d24ae";
/// The analyst every test export is made for.
pub const ANALYST: &str = "analyst@example.org";

/// Hex SHA-256 of a token, as a principal's `token_sha256`.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A principal known by `token` (if any) with `roles`.
pub fn principal(name: &str, token: Option<&str>, roles: &[Role]) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        token_sha256: token.map(token_digest),
        tls_identity: None,
        roles: roles.to_vec(),
        tenants: None,
        max_in_flight: None,
        require_recipients: None,
    }
}

/// The principal set: [`SERVICE`], [`AUDITOR`] and [`EXPORTER`].
pub fn principals() -> Vec<PrincipalConfig> {
    vec![
        principal(SERVICE, Some(TOKEN), &[Role::Exporter, Role::Auditor]),
        principal(AUDITOR, Some(AUDITOR_TOKEN), &[Role::Auditor]),
        principal(EXPORTER, Some(EXPORTER_TOKEN), &[Role::Exporter]),
    ]
}

/// [`principals`] as the `[[principals]]` tables of a config file; goes
/// after every top-level key.
pub fn principals_toml() -> String {
    let mut text = String::new();
    for p in principals() {
        let roles: Vec<&str> = p
            .roles
            .iter()
            .map(|r| match r {
                Role::Exporter => "\"exporter\"",
                Role::Auditor => "\"auditor\"",
            })
            .collect();
        text.push_str(&format!(
            "\n[[principals]]\nname = {:?}\ntoken_sha256 = {:?}\nroles = [{}]\n",
            p.name,
            p.token_sha256.as_deref().unwrap_or_default(),
            roles.join(", ")
        ));
    }
    text
}

/// Client options with `token` and `on_behalf_of`, if any.
pub fn client_options(token: Option<&str>, on_behalf_of: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(|t| Zeroizing::new(t.to_string())),
        on_behalf_of: on_behalf_of.map(str::to_string),
        ..ClientOptions::default()
    }
}

/// Client options of [`SERVICE`] exporting for [`ANALYST`].
pub fn test_client_options() -> ClientOptions {
    client_options(Some(TOKEN), Some(ANALYST))
}

/// A request with the given bearer token and `x-on-behalf-of`, if any.
pub fn with_creds<T>(msg: T, token: Option<&str>, on_behalf_of: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii token"),
        );
    }
    if let Some(o) = on_behalf_of {
        r.metadata_mut()
            .insert(ON_BEHALF_OF, o.parse().expect("ascii analyst"));
    }
    r
}

/// Wraps a message in a request carrying the test credentials, as the
/// library client would send them.
pub fn authed<T>(message: T) -> tonic::Request<T> {
    with_creds(message, Some(TOKEN), Some(ANALYST))
}
