//! Who is calling and may they: bearer tokens compared as SHA-256 digests in
//! constant time, or a typed client certificate identity (a SPIFFE URI SAN,
//! or a subject CN asked for as such); roles checked per service. The
//! interceptor records every attempt before any case data is read, with
//! only validated or bounded values from the caller.

use super::config::{PrincipalConfig, Role};
use super::error::Refusal;
use super::layer::CallContext;
use super::untrusted::{bounded_identity, invalid_note};
use crate::audit::{AuditHandle, Event, Kind};
pub use crate::contract::ON_BEHALF_OF;
use crate::contract::check_on_behalf_of;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// An authenticated caller, attached to the request for the handler.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The configured principal's name, as recorded in the audit trail.
    pub name: String,
    /// The roles the configuration grants it.
    pub roles: Vec<Role>,
    /// `None`: every tenant.
    pub tenants: Option<Vec<String>>,
    /// The client certificate's identity, typed (`spiffe://...` or
    /// `cn:NAME`): the one that named the principal, else the one it
    /// presents (bounded), if a certificate was presented.
    pub tls_identity: Option<String>,
    /// The analyst named in `x-on-behalf-of`, if the call sent one.
    pub on_behalf_of: Option<String>,
    /// The `require_recipients` of the entry that authenticated the call
    /// (entries sharing a name may differ); unset: the server's.
    pub require_recipients: Option<bool>,
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

    /// The principal a certificate names, with the typed identity that
    /// matched: a `spiffe://` identity only against the URI SANs, a `cn:`
    /// one only against the subject CN. A certificate that names two
    /// principals names none (`Err`).
    fn by_certificate(
        &self,
        names: &CertificateNames,
    ) -> Result<Option<(&PrincipalConfig, &str)>, Ambiguous> {
        let mut found = None;
        for e in &self.entries {
            let Some(id) = e.cfg.tls_identity.as_deref() else {
                continue;
            };
            let matches = if id.starts_with("spiffe://") {
                names.spiffe.iter().any(|u| u == id)
            } else if let Some(cn) = id.strip_prefix("cn:") {
                names.cn.as_deref() == Some(cn)
            } else {
                // Refused when the configuration is validated.
                false
            };
            if matches && found.replace((&e.cfg, id)).is_some() {
                return Err(Ambiguous);
            }
        }
        Ok(found)
    }
}

/// A certificate whose names match more than one principal.
#[derive(Debug, Clone, Copy)]
struct Ambiguous;

/// The names of a client certificate that can identify a principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// Its URI subject alternative names that are SPIFFE ids.
    pub spiffe: Vec<String>,
    /// The first common name of its subject.
    pub cn: Option<String>,
}

impl CertificateNames {
    /// The names of a DER certificate; `None` if it cannot be parsed.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut spiffe = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && uri.starts_with("spiffe://")
                {
                    spiffe.push(uri.to_string());
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(Self { spiffe, cn })
    }

    /// The typed identity recorded for a certificate that names no
    /// principal: its first SPIFFE id, else `cn:` and its CN; bounded.
    pub fn presented(&self) -> Option<String> {
        let id = match (self.spiffe.first(), &self.cn) {
            (Some(uri), _) => uri.clone(),
            (None, Some(cn)) => format!("cn:{cn}"),
            (None, None) => return None,
        };
        Some(bounded_identity(&id))
    }
}

/// The typed identity a DER certificate presents, as the trail records it
/// when it names no principal: its first SPIFFE URI SAN, else `cn:` and its
/// subject CN; a note of its length and SHA-256 when over 256 bytes.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    CertificateNames::from_der(der)?.presented()
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

/// What a call's `x-on-behalf-of` says.
#[derive(Debug, PartialEq, Eq)]
enum OnBehalfOf {
    Absent,
    Valid(String),
    /// Present and refused: the audit reason, the caller's message, and the
    /// note stored instead of the value.
    Invalid {
        reason: &'static str,
        message: String,
        note: String,
    },
}

impl OnBehalfOf {
    fn of(req: &Request<()>) -> Self {
        let Some(v) = req.metadata().get(ON_BEHALF_OF) else {
            return Self::Absent;
        };
        let bytes = v.as_bytes();
        match check_on_behalf_of(bytes) {
            Ok(s) => Self::Valid(s.to_owned()),
            Err(crate::contract::FieldError { reason, message }) => Self::Invalid {
                reason,
                message,
                note: invalid_note(bytes),
            },
        }
    }

    /// What the trail stores: the value as validated, else its note.
    fn recorded(&self) -> Option<String> {
        match self {
            Self::Absent => None,
            Self::Valid(v) => Some(v.clone()),
            Self::Invalid { note, .. } => Some(note.clone()),
        }
    }
}

/// Who a call says it is: its token, or the certificate that named a
/// principal, and what the trail records of it.
struct Caller<'r> {
    token: Option<&'r str>,
    names: Option<CertificateNames>,
    by_certificate: Option<Result<Option<(PrincipalConfig, String)>, Ambiguous>>,
    /// The typed identity the trail records (bounded).
    tls_identity: Option<String>,
    on_behalf_of: OnBehalfOf,
}

impl<'r> Caller<'r> {
    fn of(req: &'r Request<()>, auth: &Authenticator) -> Self {
        let names = req.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|c| CertificateNames::from_der(c.as_ref()))
        });
        let token = bearer(req);
        // Only a call without a token is named by its certificate.
        let by_certificate = match (&token, &names) {
            (None, Some(n)) => Some(
                auth.by_certificate(n)
                    .map(|found| found.map(|(p, id)| (p.clone(), id.to_string()))),
            ),
            _ => None,
        };
        let tls_identity = match &by_certificate {
            Some(Ok(Some((_, id)))) => Some(id.clone()),
            _ => names.as_ref().and_then(CertificateNames::presented),
        };
        Self {
            token,
            names,
            by_certificate,
            tls_identity,
            on_behalf_of: OnBehalfOf::of(req),
        }
    }

    /// The configured principal the credentials name, or why none.
    fn principal(&self, auth: &Authenticator) -> Result<PrincipalConfig, Refusal> {
        let found = match (&self.token, &self.by_certificate) {
            (Some(t), _) => auth.by_token(t).cloned(),
            (None, Some(Ok(p))) => p.as_ref().map(|(p, _)| p.clone()),
            (None, _) => None,
        };
        found.ok_or(Refusal::Unauthenticated {
            reason: if self.token.is_some() {
                "unknown token"
            } else if matches!(self.by_certificate, Some(Err(Ambiguous))) {
                "certificate identity names several principals"
            } else if self.names.is_some() {
                "certificate identity names no principal"
            } else {
                "no credentials"
            },
        })
    }
}

impl AuthInterceptor {
    /// The principal may call this service: its role, and for exports the
    /// analyst it calls for.
    fn authorize(&self, p: &PrincipalConfig, caller: &Caller<'_>) -> Result<(), Refusal> {
        if !p.roles.contains(&self.role) {
            return Err(Refusal::MissingRole {
                principal: p.name.clone(),
                role: self.role.as_str(),
            });
        }
        if self.needs_on_behalf_of {
            match &caller.on_behalf_of {
                OnBehalfOf::Valid(_) => {}
                OnBehalfOf::Invalid {
                    reason, message, ..
                } => {
                    return Err(Refusal::OnBehalfOf(crate::contract::FieldError {
                        reason,
                        message: message.clone(),
                    }));
                }
                OnBehalfOf::Absent => {
                    return Err(Refusal::OnBehalfOf(crate::contract::FieldError {
                        reason: "missing on-behalf-of",
                        message: format!(
                            "{ON_BEHALF_OF} metadata is required: the analyst the export is \
                             for (1 to 200 characters)"
                        ),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Records a refused call's attempt (an unknown caller's at the bounded
    /// rate of its peer; see `refusals`) and makes its status.
    fn deny(&self, ctx: Option<&CallContext>, mut attempt: Event, r: Refusal) -> Status {
        attempt.detail = Some(serde_json::json!({ "reason": r.reason() }).to_string());
        if let Some(c) = ctx {
            c.note(|i| i.denied = true);
            if attempt.principal.is_none() && !c.admit_refusal(&self.audit) {
                return r.into();
            }
        }
        self.audit.record(attempt);
        r.into()
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        // Fail closed before anything else: a call that cannot be recorded
        // is not taken (the trail is refused, or too many events wait for
        // the store).
        if !self.audit.is_accepting() {
            return Err(Refusal::NotRecordable.into());
        }
        let ctx = req.extensions().get::<CallContext>().cloned();
        let caller = Caller::of(&req, &self.auth);
        let mut attempt = match &ctx {
            Some(c) => c.event(Kind::Attempt),
            None => Event::new(Kind::Attempt, ""),
        };
        attempt.tls_identity = caller.tls_identity.clone();
        attempt.on_behalf_of = caller.on_behalf_of.recorded();
        if let Some(c) = &ctx {
            c.note(|i| {
                i.on_behalf_of = caller.on_behalf_of.recorded();
                i.tls_identity = caller.tls_identity.clone();
            });
        }
        let p = match caller.principal(&self.auth) {
            Ok(p) => p,
            Err(r) => return Err(self.deny(ctx.as_ref(), attempt, r)),
        };
        attempt.principal = Some(p.name.clone());
        if let Some(c) = &ctx {
            c.note(|i| i.principal = Some(p.name.clone()));
        }
        if let Err(r) = self.authorize(&p, &caller) {
            return Err(self.deny(ctx.as_ref(), attempt, r));
        }
        let principal = Principal {
            name: p.name.clone(),
            roles: p.roles.clone(),
            tenants: p.tenants.clone(),
            require_recipients: p.require_recipients,
            tls_identity: caller.tls_identity.clone(),
            on_behalf_of: match &caller.on_behalf_of {
                OnBehalfOf::Valid(v) => Some(v.clone()),
                _ => None,
            },
        };
        let ack = self.audit.record_acked(attempt);
        if let Some(c) = &ctx {
            c.set_attempt_ack(ack);
        }
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str, id: &str) -> PrincipalConfig {
        PrincipalConfig {
            name: name.into(),
            token_sha256: None,
            tls_identity: Some(id.into()),
            roles: vec![Role::Exporter],
            tenants: None,
            max_in_flight: None,
            require_recipients: None,
        }
    }

    fn names(spiffe: &[&str], cn: Option<&str>) -> CertificateNames {
        CertificateNames {
            spiffe: spiffe.iter().map(|s| s.to_string()).collect(),
            cn: cn.map(str::to_owned),
        }
    }

    fn who(auth: &Authenticator, n: &CertificateNames) -> Option<(String, String)> {
        auth.by_certificate(n)
            .expect("not ambiguous")
            .map(|(p, id)| (p.name.clone(), id.to_string()))
    }

    #[test]
    fn identities_match_only_their_kind_of_name() {
        let auth = Authenticator::new(&[
            principal("svc-a", "spiffe://example.org/svc-a"),
            principal("batch", "cn:legacy-batch"),
        ]);
        let a = Some(("svc-a".into(), "spiffe://example.org/svc-a".into()));
        let batch = Some(("batch".into(), "cn:legacy-batch".into()));
        assert_eq!(who(&auth, &names(&["spiffe://example.org/svc-a"], None)), a);
        assert_eq!(
            who(
                &auth,
                &names(
                    &["spiffe://example.org/other", "spiffe://example.org/svc-a"],
                    Some("x")
                )
            ),
            a
        );
        assert_eq!(who(&auth, &names(&[], Some("legacy-batch"))), batch);
        // The look-alike: a CN spelling svc-a's id is no URI SAN.
        assert_eq!(
            who(&auth, &names(&[], Some("spiffe://example.org/svc-a"))),
            None
        );
        // A URI SAN spelling the CN identity is no CN.
        assert_eq!(who(&auth, &names(&["cn:legacy-batch"], None)), None);
        assert_eq!(who(&auth, &names(&[], Some("Legacy-Batch"))), None);
        // Names of two principals: neither.
        assert!(
            auth.by_certificate(&names(
                &["spiffe://example.org/svc-a"],
                Some("legacy-batch")
            ))
            .is_err()
        );
    }

    #[test]
    fn presented_identity_is_typed_and_bounded() {
        assert_eq!(
            names(&["spiffe://x/a"], Some("cn")).presented().as_deref(),
            Some("spiffe://x/a")
        );
        assert_eq!(
            names(&[], Some("svc")).presented().as_deref(),
            Some("cn:svc")
        );
        assert_eq!(names(&[], None).presented(), None);
        let huge = "h".repeat(5000);
        let p = names(&[], Some(&huge)).presented().expect("noted");
        assert!(p.starts_with("invalid (5003 bytes) sha256:"), "{p}");
    }

    #[test]
    fn on_behalf_of_rules() {
        assert_eq!(check_on_behalf_of(b"analyst.one"), Ok("analyst.one"));
        assert_eq!(
            check_on_behalf_of("a".repeat(200).as_bytes()).map(str::len),
            Ok(200)
        );
        for (value, reason, says) in [
            (&b""[..], "missing on-behalf-of", "is required"),
            (b"   ", "missing on-behalf-of", "is required"),
            (&[b'a'; 201][..], "missing on-behalf-of", "201 characters"),
            (b"a\tb", "missing on-behalf-of", "U+0009"),
            (
                "alice\u{202E}.evil".as_bytes(),
                "malformed on-behalf-of",
                "U+202E",
            ),
            ("\u{FEFF}bob".as_bytes(), "malformed on-behalf-of", "U+FEFF"),
            ("jos\u{E9}".as_bytes(), "malformed on-behalf-of", "U+00E9"),
            (b"\xff\xfe", "malformed on-behalf-of", "not UTF-8"),
        ] {
            let crate::contract::FieldError {
                reason: r,
                message: m,
            } = check_on_behalf_of(value).expect_err("refused");
            assert_eq!(r, reason, "{value:?}");
            assert!(
                m.starts_with(ON_BEHALF_OF) && m.contains(says),
                "{value:?}: {m}"
            );
            assert!(m.len() <= 200, "{m}");
        }
    }
}
