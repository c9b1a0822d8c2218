//! Who is calling and may they: bearer tokens compared as SHA-256 digests in
//! constant time, or a client certificate identity; roles checked per
//! service. The interceptor records every attempt before any case data is
//! read.

use super::config::{PrincipalConfig, Role};
use super::layer::CallContext;
use crate::audit::{AuditHandle, Event, Kind};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Metadata naming the analyst an export is made for.
pub const ON_BEHALF_OF: &str = "x-on-behalf-of";

/// An authenticated caller, attached to the request for the handler.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The configured principal's name, as recorded in the audit trail.
    pub name: String,
    /// The roles the configuration grants it.
    pub roles: Vec<Role>,
    /// `None`: every tenant.
    pub tenants: Option<Vec<String>>,
    /// The client certificate's identity (SPIFFE URI SAN, else CN), if one was presented.
    pub tls_identity: Option<String>,
    /// The analyst named in `x-on-behalf-of`, if the call sent one.
    pub on_behalf_of: Option<String>,
}

struct Entry {
    cfg: PrincipalConfig,
    token_digest: Option<[u8; 32]>,
}

/// The configured principals.
pub struct Authenticator {
    entries: Vec<Entry>,
}

impl Authenticator {
    pub fn new(principals: &[PrincipalConfig]) -> Self {
        let entries = principals
            .iter()
            .map(|p| Entry {
                cfg: p.clone(),
                token_digest: p.token_sha256.as_deref().and_then(|h| {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(h, &mut d).ok().map(|_| d)
                }),
            })
            .collect();
        Self { entries }
    }

    /// The principal whose token digest matches; every entry is compared,
    /// in constant time, so timing says nothing about which one matched.
    fn by_token(&self, token: &str) -> Option<&PrincipalConfig> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if let Some(d) = &e.token_digest
                && bool::from(d.ct_eq(&digest))
            {
                found = Some(&e.cfg);
            }
        }
        found
    }

    fn by_tls(&self, identity: &str) -> Option<&PrincipalConfig> {
        self.entries
            .iter()
            .find(|e| e.cfg.tls_identity.as_deref() == Some(identity))
            .map(|e| &e.cfg)
    }
}

/// The SPIFFE URI SAN of a DER certificate, else its subject CN.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                return Some(uri.to_string());
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// The tonic interceptor of one service, requiring one role.
#[derive(Clone)]
pub struct AuthInterceptor {
    pub auth: Arc<Authenticator>,
    pub audit: AuditHandle,
    pub role: Role,
    /// Whether calls must name an analyst in `x-on-behalf-of`.
    pub needs_on_behalf_of: bool,
}

/// The bearer token, borrowed from the metadata: never copied into memory
/// that is freed without being wiped.
fn bearer(req: &Request<()>) -> Option<&str> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn valid_on_behalf_of(v: &str) -> bool {
    let n = v.chars().count();
    (1..=200).contains(&n) && !v.chars().any(char::is_control) && !v.trim().is_empty()
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ctx = req.extensions().get::<CallContext>().cloned();
        let request_id = ctx
            .as_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        let mut ev = Event::new(Kind::Attempt, request_id);
        if let Some(c) = &ctx {
            ev.method = Some(c.method.clone());
            ev.peer = c.peer.clone();
        }
        let tls_identity = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| certificate_identity(c.as_ref())));
        ev.tls_identity = tls_identity.clone();
        let on_behalf_of = req
            .metadata()
            .get(ON_BEHALF_OF)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ev.on_behalf_of = on_behalf_of.clone();
        if let Some(c) = &ctx {
            c.note(|i| {
                i.on_behalf_of = on_behalf_of.clone();
                i.tls_identity = tls_identity.clone();
            });
        }

        let token = bearer(&req);
        let found = match &token {
            Some(t) => self.auth.by_token(t),
            None => tls_identity.as_deref().and_then(|i| self.auth.by_tls(i)),
        };
        let deny = |mut ev: Event, status: Status, reason: &str| {
            ev.detail = Some(serde_json::json!({ "reason": reason }).to_string());
            if let Some(c) = &ctx {
                c.note(|i| i.denied = true);
            }
            self.audit.record(ev);
            Err(status)
        };
        let Some(p) = found else {
            let why = if token.is_some() {
                "unknown token"
            } else if tls_identity.is_some() {
                "certificate identity names no principal"
            } else {
                "no credentials"
            };
            return deny(
                ev,
                Status::unauthenticated(
                    "missing or invalid credentials: send 'authorization: Bearer <token>' \
                     or a client certificate known to the server",
                ),
                why,
            );
        };
        ev.principal = Some(p.name.clone());
        if let Some(c) = &ctx {
            c.note(|i| i.principal = Some(p.name.clone()));
        }
        if !p.roles.contains(&self.role) {
            return deny(
                ev,
                Status::permission_denied(format!(
                    "principal {:?} lacks the {} role",
                    p.name,
                    self.role.as_str()
                )),
                "missing role",
            );
        }
        if self.needs_on_behalf_of {
            let present = req.metadata().contains_key(ON_BEHALF_OF);
            match &on_behalf_of {
                Some(v) if valid_on_behalf_of(v) => {}
                None if present => {
                    return deny(
                        ev,
                        Status::invalid_argument(format!(
                            "{ON_BEHALF_OF} must be printable ASCII (1 to 200 characters)"
                        )),
                        "malformed on-behalf-of",
                    );
                }
                _ => {
                    return deny(
                        ev,
                        Status::invalid_argument(format!(
                            "{ON_BEHALF_OF} metadata is required: the analyst the export is \
                             for (1 to 200 characters)"
                        )),
                        "missing on-behalf-of",
                    );
                }
            }
        }
        let principal = Principal {
            name: p.name.clone(),
            roles: p.roles.clone(),
            tenants: p.tenants.clone(),
            tls_identity,
            on_behalf_of,
        };
        let ack = self.audit.record_acked(ev);
        if let Some(c) = &ctx {
            c.set_attempt_ack(ack);
        }
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}
