//! Export slots per principal: one caller cannot take every slot of
//! `max_in_flight`. A principal's entry may set its own `max_in_flight`;
//! otherwise `max_in_flight_per_principal` applies.

use super::config::Config;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Exports in flight per principal name, against each one's cap.
pub struct PrincipalSlots {
    inner: Arc<Mutex<HashMap<String, usize>>>,
    caps: HashMap<String, usize>,
    default_cap: usize,
}

/// One export's slot of its principal; given back on drop.
pub struct PrincipalSlot {
    inner: Arc<Mutex<HashMap<String, usize>>>,
    name: String,
}

impl PrincipalSlots {
    pub fn new(config: &Config) -> Self {
        let mut caps: HashMap<String, usize> = HashMap::new();
        for p in &config.principals {
            if let Some(n) = p.max_in_flight {
                // Names need not be unique: the smallest cap given wins.
                let cap = caps.entry(p.name.clone()).or_insert(n);
                *cap = (*cap).min(n);
            }
        }
        Self {
            inner: Arc::default(),
            caps,
            default_cap: config.max_in_flight_per_principal,
        }
    }

    /// The cap of `principal`.
    pub fn cap(&self, principal: &str) -> usize {
        self.caps
            .get(principal)
            .copied()
            .unwrap_or(self.default_cap)
    }

    /// A slot for `principal`, or its cap when all are taken.
    pub fn try_take(&self, principal: &str) -> Result<PrincipalSlot, usize> {
        let cap = self.cap(principal);
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(principal.to_string()).or_insert(0);
        if *n >= cap {
            return Err(cap);
        }
        *n += 1;
        Ok(PrincipalSlot {
            inner: self.inner.clone(),
            name: principal.to_string(),
        })
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.name) {
            *n -= 1;
            // Only principals with exports running keep an entry.
            if *n == 0 {
                m.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{PrincipalConfig, Role};

    fn principal(name: &str, cap: Option<usize>) -> PrincipalConfig {
        PrincipalConfig {
            name: name.into(),
            token_sha256: Some("0".repeat(64)),
            tls_identity: None,
            roles: vec![Role::Exporter],
            tenants: None,
            max_in_flight: cap,
            require_recipients: None,
        }
    }

    #[test]
    fn each_principal_has_its_cap_and_slots_come_back() {
        let config = Config {
            max_in_flight_per_principal: 2,
            principals: vec![principal("a", None), principal("b", Some(1))],
            ..Config::default()
        };
        let slots = PrincipalSlots::new(&config);
        let a1 = slots.try_take("a").unwrap();
        let _a2 = slots.try_take("a").unwrap();
        assert_eq!(slots.try_take("a").err(), Some(2));
        let b1 = slots.try_take("b").unwrap();
        assert_eq!(slots.try_take("b").err(), Some(1));
        drop(a1);
        drop(b1);
        slots.try_take("a").unwrap();
        slots.try_take("b").unwrap();
    }
}
