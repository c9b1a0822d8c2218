//! Owns the demo case database: its schema and a deterministic synthetic-case generator.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{CachedStatement, Connection, TransactionBehavior, params};
use time::OffsetDateTime;
use time::macros::datetime;

/// The demo case database's schema (`schema/cases.sql`), as SQL to execute.
pub const SCHEMA_SQL: &str = include_str!("../schema/cases.sql");

/// Every table the schema creates, parents before children.
const TABLES: [&str; 14] = [
    "users",
    "cases",
    "subjects",
    "transactions",
    "analysis_results",
    "indicators",
    "evidence",
    "evidence_documents",
    "evidence_photos",
    "evidence_emails",
    "evidence_links",
    "annotations",
    "notes",
    "custody_events",
];

const START: i64 = datetime!(2023-01-01 0:00 UTC).unix_timestamp();
/// Exclusive, so every generated timestamp falls in 2023–2025.
const END: i64 = datetime!(2026-01-01 0:00 UTC).unix_timestamp();
const DAY: i64 = 86_400;
const DOB_START: i64 = datetime!(1940-01-01 0:00 UTC).unix_timestamp();
const DOB_END: i64 = datetime!(2004-01-01 0:00 UTC).unix_timestamp();

// Writing into a String cannot fail, so the fmt::Result carries nothing.
macro_rules! w {
    ($buf:expr, $($arg:tt)*) => {{
        let _ = write!($buf, $($arg)*);
    }};
}

/// What the demo generator produces; the same options give the same database.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Number of cases to generate; at least 1.
    pub cases: u32,
    /// Transactions per case; the other per-case tables get set fractions of it.
    pub rows_per_case: u32,
    /// Seed of the random generator that makes the output deterministic.
    pub seed: u64,
    /// Tenant names cases are spread over at random; none may be empty.
    pub tenants: Vec<String>,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            cases: 20,
            rows_per_case: 200,
            seed: 42,
            tenants: vec!["north".to_owned(), "south".to_owned()],
        }
    }
}

/// What a seeding run produced.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// Ids (UUIDs) of the generated cases, in generation order.
    pub case_ids: Vec<String>,
    /// Rows inserted, over all tables.
    pub rows: u64,
    /// Size of the database once the WAL is folded in, in bytes.
    pub bytes: u64,
    /// Wall time spent applying the schema and filling the database.
    pub elapsed: Duration,
}

impl SeedReport {
    /// Inserted rows per second of wall time; 0 when no time was measured.
    pub fn rows_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rows as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why the demo database could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The path already exists and is not an empty file.
    #[error("{} already exists: pass a new path", .0.display())]
    Exists(PathBuf),
    /// The database file could not be created or inspected.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// `cases` was 0.
    #[error("no cases requested: ask for at least one case")]
    NoCases,
    /// No tenants were given, or one of them is empty.
    #[error("no tenant names given: pass at least one non-empty tenant")]
    NoTenants,
    /// The named table already holds rows, whose ids would collide.
    #[error("table {0} already has rows: seed into a new database")]
    NotEmpty(&'static str),
    /// A SQLite operation failed.
    #[error("sqlite error while seeding: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Creates a new database at `path` (refuse if it exists and is non-empty) and fills it.
pub fn seed_demo(path: &Path, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let created = claim_path(path)?;
    let result = seed_file(path, opts);
    if result.is_err() && created {
        // A half-built demo database is useless and would make a retry with the
        // same path refuse; the seeding error matters more than this one.
        let _ = fs::remove_file(path);
    }
    result
}

/// Applies the schema and fills an already open connection (used by tests on temp files).
pub fn seed_connection(conn: &mut Connection, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let started = Instant::now();
    let fk_was_on: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // Enforced while seeding so a generator bug fails loudly instead of
    // producing a database the exporter would trip over.
    conn.pragma_update(None, "foreign_keys", true)?;

    let filled = fill(conn, opts);
    // Restore even when filling failed: the caller keeps using this connection.
    let restored = conn
        .pragma_update(None, "synchronous", "NORMAL")
        .and_then(|()| conn.pragma_update(None, "foreign_keys", fk_was_on));
    let (case_ids, rows) = filled?;
    restored?;

    // Fold the WAL into the main file so the file alone is the whole database.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let bytes: i64 = conn.query_row(
        "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s",
        [],
        |r| r.get(0),
    )?;
    Ok(SeedReport {
        case_ids,
        rows,
        bytes: u64::try_from(bytes).unwrap_or(0),
        elapsed: started.elapsed(),
    })
}

fn validate(opts: &SeedOptions) -> Result<(), SeedError> {
    if opts.cases == 0 {
        return Err(SeedError::NoCases);
    }
    if opts.tenants.is_empty() || opts.tenants.iter().any(|t| t.is_empty()) {
        return Err(SeedError::NoTenants);
    }
    Ok(())
}

/// Returns whether the file was created here (and so may be removed on failure).
fn claim_path(path: &Path) -> Result<bool, SeedError> {
    let io_err = |source| SeedError::Io {
        path: path.to_path_buf(),
        source,
    };
    // create_new is atomic, so two seeders can never fill the same file.
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(path).map_err(io_err)?;
            // An empty file is an empty SQLite database (e.g. from mktemp).
            if meta.is_file() && meta.len() == 0 {
                Ok(false)
            } else {
                Err(SeedError::Exists(path.to_path_buf()))
            }
        }
        Err(e) => Err(io_err(e)),
    }
}

fn seed_file(path: &Path, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    let mut conn = Connection::open(path)?;
    let report = seed_connection(&mut conn, opts)?;
    // Closing explicitly surfaces late write errors and removes -wal/-shm.
    conn.close().map_err(|(_, e)| e)?;
    Ok(report)
}

fn fill(conn: &mut Connection, opts: &SeedOptions) -> Result<(Vec<String>, u64), SeedError> {
    // Immediate: fail up front if another writer holds the database.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_SQL)?;
    // Ids are assigned here, so existing rows would collide half-way through.
    for table in TABLES {
        let used: bool =
            tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get(0)
            })?;
        if used {
            return Err(SeedError::NotEmpty(table));
        }
    }
    let out = Generator::new(&tx, opts)?.run()?;
    tx.commit()?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Word lists. Names deliberately include non-ASCII letters and an apostrophe
// so exports are exercised with real-world text. Kept dense by hand.

struct City {
    name: &'static str,
    lat: f64,
    lon: f64,
    streets: [&'static str; 2],
}

struct Country {
    code: &'static str,
    dial: &'static str,
    /// IBAN BBAN shape, `9` a digit and `A` a letter; empty where there is no IBAN.
    bban: &'static str,
    banks: &'static [&'static str],
    cities: &'static [City],
}

#[rustfmt::skip]
mod words {
    use super::{City, Country};

    pub(super) const FIRST_NAMES: &[&str] = &[
        "Anna", "Lukas", "Sofia", "Jonas", "Emma", "Matteo", "Léa", "Noah", "Mia", "Elias", "Clara",
        "Luca", "Julia", "Felix", "Chiara", "David", "Sara", "Tobias", "Elena", "Marco", "Laura", "Jan",
        "Hannah", "Pierre", "Camille", "Oliver", "Amelia", "James", "Isabel", "Mehmet", "Zoë", "Łukasz",
        "José", "Søren", "Chloé", "Fatima", "Nikolaos", "Ingrid", "Ahmed", "Grace",
    ];
    pub(super) const LAST_NAMES: &[&str] = &[
        "Müller", "Schmidt", "Rossi", "Bianchi", "Dubois", "Martin", "García", "Fernández", "Smith",
        "Jones", "Taylor", "Brown", "Novak", "Kowalski", "Jansen", "de Vries", "Meier", "Keller",
        "Weber", "Huber", "Moreau", "Costa", "Silva", "Nielsen", "Andersson", "O'Brien", "Fischer",
        "Wagner", "Becker", "Ricci", "Papadopoulos", "Yılmaz", "Haddad", "Larsen", "Novotný",
    ];
    pub(super) const COMPANY_STEMS: &[&str] = &[
        "Northwind", "Blue Harbor", "Alpine", "Meridian", "Crescent", "Helvetia", "Danube", "Baltic",
        "Silverline", "Orion", "Atlas", "Pinnacle", "Greenfield", "Ironbridge", "Lakeside", "Nordic",
        "Sapphire", "Vanguard", "Westgate", "Zenith", "Golden Gate", "Redwood", "Aurora", "Caspian",
    ];
    pub(super) const COMPANY_TRADES: &[&str] = &[
        "Trading", "Logistics", "Consulting", "Holdings", "Capital", "Import Export", "Invest",
        "Services", "Ventures", "Commodities", "Shipping", "Technologies",
    ];
    /// Neutral domains (RFC 2606 style) so synthetic people never get real addresses.
    pub(super) const MAIL_DOMAINS: &[&str] = &[
        "example.com", "example.net", "example.org", "mail.example", "inbox.example",
    ];
    pub(super) static DE: Country = Country { code: "DE", dial: "+49", bban: "999999999999999999",
        banks: &["Deutsche Bank", "Commerzbank", "Sparkasse KölnBonn"],
        cities: &[
            City { name: "Berlin", lat: 52.5200, lon: 13.4050, streets: ["Friedrichstraße", "Karl-Marx-Allee"] },
            City { name: "Frankfurt am Main", lat: 50.1109, lon: 8.6821, streets: ["Kaiserstraße", "Mainzer Landstraße"] },
        ],
    };
    pub(super) static CH: Country = Country { code: "CH", dial: "+41", bban: "99999999999999999",
        banks: &["UBS", "Zürcher Kantonalbank", "PostFinance"],
        cities: &[
            City { name: "Zürich", lat: 47.3769, lon: 8.5417, streets: ["Bahnhofstrasse", "Seefeldstrasse"] },
            City { name: "Geneva", lat: 46.2044, lon: 6.1432, streets: ["Rue du Rhône", "Quai du Mont-Blanc"] },
        ],
    };
    pub(super) static GB: Country = Country { code: "GB", dial: "+44", bban: "AAAA99999999999999",
        banks: &["Barclays", "HSBC UK", "Lloyds Bank"],
        cities: &[
            City { name: "London", lat: 51.5074, lon: -0.1278, streets: ["High Holborn", "Bishopsgate"] },
            City { name: "Manchester", lat: 53.4808, lon: -2.2426, streets: ["Deansgate", "Oxford Road"] },
        ],
    };
    pub(super) static FR: Country = Country { code: "FR", dial: "+33", bban: "99999999999999999999999",
        banks: &["BNP Paribas", "Société Générale"],
        cities: &[
            City { name: "Paris", lat: 48.8566, lon: 2.3522, streets: ["Rue de Rivoli", "Boulevard Haussmann"] },
            City { name: "Lyon", lat: 45.7640, lon: 4.8357, streets: ["Rue de la République", "Cours Lafayette"] },
        ],
    };
    pub(super) static NL: Country = Country { code: "NL", dial: "+31", bban: "AAAA9999999999",
        banks: &["ING", "ABN AMRO", "Rabobank"],
        cities: &[
            City { name: "Amsterdam", lat: 52.3676, lon: 4.9041, streets: ["Keizersgracht", "Damrak"] },
            City { name: "Rotterdam", lat: 51.9244, lon: 4.4777, streets: ["Coolsingel", "Witte de Withstraat"] },
        ],
    };
    pub(super) static LU: Country = Country { code: "LU", dial: "+352", bban: "9999999999999999",
        banks: &["Banque Internationale à Luxembourg", "Spuerkeess"],
        cities: &[
            City { name: "Luxembourg", lat: 49.6116, lon: 6.1319, streets: ["Boulevard Royal", "Avenue de la Liberté"] },
        ],
    };
    pub(super) static IT: Country = Country { code: "IT", dial: "+39", bban: "A9999999999999999999999",
        banks: &["UniCredit", "Intesa Sanpaolo"],
        cities: &[
            City { name: "Milan", lat: 45.4642, lon: 9.1900, streets: ["Via Montenapoleone", "Corso Buenos Aires"] },
        ],
    };
    pub(super) static ES: Country = Country { code: "ES", dial: "+34", bban: "99999999999999999999",
        banks: &["Banco Santander", "BBVA"],
        cities: &[
            City { name: "Madrid", lat: 40.4168, lon: -3.7038, streets: ["Calle de Alcalá", "Gran Vía"] },
        ],
    };
    pub(super) static AT: Country = Country { code: "AT", dial: "+43", bban: "9999999999999999",
        banks: &["Erste Bank", "Raiffeisen Bank International"],
        cities: &[
            City { name: "Vienna", lat: 48.2082, lon: 16.3738, streets: ["Kärntner Straße", "Mariahilfer Straße"] },
        ],
    };
    pub(super) static US: Country = Country { code: "US", dial: "+1", bban: "",
        banks: &["JPMorgan Chase", "Bank of America", "Citibank"],
        cities: &[
            City { name: "New York", lat: 40.7128, lon: -74.0060, streets: ["Madison Avenue", "Wall Street"] },
            City { name: "Miami", lat: 25.7617, lon: -80.1918, streets: ["Brickell Avenue", "Biscayne Boulevard"] },
        ],
    };
    pub(super) static CY: Country = Country { code: "CY", dial: "+357", bban: "999999999999999999999999",
        banks: &["Bank of Cyprus", "Hellenic Bank"],
        cities: &[
            City { name: "Limassol", lat: 34.7071, lon: 33.0226, streets: ["Makarios III Avenue", "Anexartisias Street"] },
        ],
    };
    pub(super) static AE: Country = Country { code: "AE", dial: "+971", bban: "9999999999999999999",
        banks: &["Emirates NBD", "Mashreq"],
        cities: &[
            City { name: "Dubai", lat: 25.2048, lon: 55.2708, streets: ["Sheikh Zayed Road", "Al Wasl Road"] },
        ],
    };
    pub(super) static PA: Country = Country { code: "PA", dial: "+507", bban: "",
        banks: &["Banco General", "Banistmo"],
        cities: &[
            City { name: "Panama City", lat: 8.9824, lon: -79.5199, streets: ["Calle 50", "Avenida Balboa"] },
        ],
    };
    pub(super) static VG: Country = Country { code: "VG", dial: "+1 284", bban: "",
        banks: &["VP Bank (BVI)"],
        cities: &[
            City { name: "Road Town", lat: 18.4207, lon: -64.6400, streets: ["Main Street", "Waterfront Drive"] },
        ],
    };
    pub(super) static ONSHORE: [&Country; 10] = [&DE, &CH, &GB, &FR, &NL, &LU, &IT, &ES, &AT, &US];
    pub(super) static OFFSHORE: [&Country; 4] = [&CY, &AE, &PA, &VG];
    pub(super) static COMPANY_FORMS: [(&str, &Country); 15] = [
        ("GmbH", &DE), ("AG", &CH), ("Ltd", &GB), ("LLC", &US), ("S.A.", &LU), ("B.V.", &NL),
        ("S.à r.l.", &LU), ("SAS", &FR), ("S.r.l.", &IT), ("S.L.", &ES), ("GmbH", &AT),
        ("Limited", &CY), ("Ltd", &VG), ("S.A.", &PA), ("FZE", &AE),
    ];
    pub(super) const USER_ROLES: &[&str] = &[
        "supervisor", "investigator", "investigator", "analyst", "analyst", "auditor",
    ];
    pub(super) const FRAUD_TYPES: &[&str] = &[
        "Invoice fraud", "Money laundering", "Account takeover", "Procurement fraud",
        "Payroll diversion", "Trade-based laundering", "CEO fraud", "Insurance claim fraud",
        "Embezzlement", "Sanctions evasion", "VAT carousel fraud", "Loan fraud",
    ];
    pub(super) const REPORT_SOURCES: &[&str] = &[
        "the compliance team", "an automated transaction alert", "a whistleblower",
        "a correspondent bank", "the external auditor", "a law-enforcement request",
    ];
    pub(super) const STATUSES: &[&str] = &[
        "open", "triage", "investigating", "investigating", "escalated", "closed", "archived",
    ];
    pub(super) const PRIORITIES: &[&str] = &["low", "medium", "medium", "high", "critical"];
    pub(super) const SERVICES: &[&str] = &[
        "consulting", "marketing", "IT support", "logistics", "market research", "software licensing",
        "facility management", "brokerage",
    ];
    pub(super) const MONTHS: &[&str] = &[
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ];
    pub(super) const SUBJECT_ROLES: &[&str] = &[
        "Director", "Beneficial owner", "Account holder", "Authorised signatory", "Former employee",
        "Nominee director", "Supplier contact",
    ];
    pub(super) const MODELS: &[&str] = &[
        "rules-engine 4.2", "gbm-risk 2024.06", "graph-link 1.9", "txn-anomaly 3.0", "manual review",
    ];
    pub(super) const DECISIONS: &[&str] = &["escalate", "monitor", "dismiss", "file_sar", "request_information"];
    pub(super) const INDICATOR_TYPES: &[&str] = &[
        "structuring", "rapid_movement", "high_risk_country", "round_amounts", "shell_company",
        "pep_match", "sanctions_screening_hit", "unusual_hours", "velocity_spike", "money_mule_pattern",
        "dormant_account_reactivation", "layering",
    ];
    pub(super) const DOC_MIME: &[(&str, &str)] = &[
        ("application/pdf", "Bank statement"), ("application/pdf", "Invoice"),
        ("application/pdf", "Service agreement"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "Board minutes"),
        ("application/pdf", "KYC file"), ("text/plain", "Interview transcript"),
        ("image/tiff", "Scanned ledger"),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "Payment run export"),
    ];
    pub(super) const PHOTO_SUBJECTS: &[&str] = &[
        "signed contract page", "ATM camera still", "office entrance", "whiteboard in meeting room",
        "seized laptop", "handwritten ledger", "delivery note", "passport copy", "warehouse shelves",
    ];
    pub(super) const CAMERAS: &[(&str, &str, &str)] = &[
        ("Apple", "iPhone 13", "17.2.1"), ("Apple", "iPhone 15 Pro", "18.1"),
        ("samsung", "SM-S918B", "S918BXXU3BWK5"), ("Google", "Pixel 8", "HDR+ 1.0.584"),
        ("Canon", "Canon EOS R6", "Firmware Version 1.8.1"),
        ("NIKON CORPORATION", "NIKON D750", "Ver.1.15"), ("SONY", "ILCE-7M3", "ILCE-7M3 v4.01"),
        ("FUJIFILM", "X-T4", "Digital Camera X-T4 Ver2.00"),
    ];
    pub(super) const RESOLUTIONS: &[(i64, i64)] = &[
        (4032, 3024), (3024, 4032), (6000, 4000), (4000, 3000), (1920, 1080), (8256, 5504),
    ];
    pub(super) const EXPOSURES: &[&str] = &["1/30", "1/60", "1/125", "1/250", "1/500", "1/1000"];
    pub(super) const F_NUMBERS: &[&str] = &["1.8", "2.8", "4.0", "5.6", "8.0"];
    pub(super) const ISOS: &[u32] = &[100, 200, 400, 800, 1600, 3200];
    pub(super) const EMAIL_SUBJECTS: &[&str] = &[
        "Re: payment instruction", "Fwd: updated bank details", "Urgent - transfer today",
        "Re: Re: outstanding balance", "Confidential: acquisition", "Signed contract attached",
        "Quarterly reconciliation", "Invoice reminder",
    ];
    pub(super) const EMAIL_SENTENCES: &[&str] = &[
        "Please process the attached invoice before Friday.",
        "Our bank details have changed, kindly use the new account going forward.",
        "As discussed, the amount should be split into several smaller payments.",
        "Please keep this confidential until the deal is announced.",
        "Let me know once the transfer has been released.", "The auditors will not need to see this.",
        "I have attached the signed contract for your records.",
        "Can you confirm receipt by return email?", "The CFO has approved this, no need to call.",
        "Use the reference exactly as written or the payment will bounce.",
    ];
    pub(super) const LINK_RELATIONS: &[&str] = &[
        "attachment_of", "references", "derived_from", "contradicts", "duplicate_of",
    ];
    pub(super) const CROSS_RELATIONS: &[&str] = &["same_device", "same_sender", "duplicate_of", "references"];
    pub(super) const ANNOTATIONS: &[&str] = &[
        "Amount on this page does not match the ledger entry.",
        "Signature appears to be copied from another document.",
        "File metadata predates the stated creation date.",
        "Consistent with the bank statement for the same period.",
        "Same device serial number as evidence in a related case.",
        "Redact third-party personal data before disclosure.",
        "Handwritten note in margin: 'pay via Cyprus'.", "Timestamps are local time, not UTC.",
        "Sender domain was registered days before first contact.",
        "Checked against original: identical hash.",
    ];
    pub(super) const NOTES: &[&str] = &[
        "Called the subject; no answer, left a voicemail.",
        "Requested account statements from the bank.", "Subject's lawyer asked for a meeting.",
        "Escalating: amounts exceed the internal threshold.",
        "Reviewed evidence batch; several items still unhashed.",
        "Screened all counterparties against sanctions lists: no match.",
        "Waiting for the production order from the prosecutor's office.",
        "Interview scheduled at the field office.", "Linked to an earlier alert on the same IBAN.",
    ];
    pub(super) const REPLIES: &[&str] = &[
        "Agreed, go ahead.", "Done, statements are attached as evidence.",
        "Please loop in compliance before contacting the subject.",
        "Can we confirm the IBAN with the bank first?", "Noted. Re-opened the related alert.",
        "Follow-up: the subject called back and confirmed the transfer.",
    ];
    pub(super) const CUSTODY_FOLLOW_UPS: &[&str] = &[
        "hashed", "imaged", "transferred", "checked_out", "checked_in", "sealed", "accessed",
        "copy_exported",
    ];
    pub(super) const CUSTODY_LOCATIONS: &[&str] = &[
        "Evidence room B2", "Forensic lab 1", "Secure locker 14", "Courier, sealed bag",
        "Remote acquisition", "Zürich field office", "London field office",
    ];
}
use words::*;

/// Alphabet for the fake password hashes.
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// ---------------------------------------------------------------------------

const SQL_USER: &str = "INSERT INTO users (id, email, display_name, role, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_USER_VIEWED: &str = "UPDATE users SET last_viewed_case_id = ?2 WHERE id = ?1";
const SQL_CASE: &str = "INSERT INTO cases (id, case_number, title, description, status, priority, tenant, assigned_to, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const SQL_SUBJECT: &str = "INSERT INTO subjects (id, case_id, kind, full_name, date_of_birth, national_id, email, phone, address, nationality, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const SQL_TXN: &str = "INSERT INTO transactions (id, case_id, subject_id, amount, currency, occurred_at, counterparty, counterparty_bank, counterparty_iban, direction, reference) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const SQL_ANALYSIS: &str = "INSERT INTO analysis_results (id, case_id, analyst_id, model, risk_score, decision, reviewer_notes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const SQL_INDICATOR: &str = "INSERT INTO indicators (id, analysis_id, transaction_id, indicator_type, confidence, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_EVIDENCE: &str = "INSERT INTO evidence (id, case_id, kind, title, sha256, size_bytes, collected_at, collected_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const SQL_DOCUMENT: &str = "INSERT INTO evidence_documents (evidence_id, mime_type, page_count, extracted_text) VALUES (?1, ?2, ?3, ?4)";
const SQL_PHOTO: &str = "INSERT INTO evidence_photos (evidence_id, width, height, camera_make, camera_model, taken_at, gps_lat, gps_lon, exif_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const SQL_EMAIL: &str = "INSERT INTO evidence_emails (evidence_id, sender, recipients, subject, sent_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_LINK: &str = "INSERT INTO evidence_links (id, from_evidence_id, to_evidence_id, relation, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";
const SQL_ANNOTATION: &str = "INSERT INTO annotations (id, evidence_id, author_id, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";
const SQL_NOTE: &str = "INSERT INTO notes (id, case_id, author_id, parent_note_id, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_CUSTODY: &str = "INSERT INTO custody_events (id, evidence_id, actor_id, action, occurred_at, location, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

struct Stmts<'c> {
    user: CachedStatement<'c>,
    user_viewed: CachedStatement<'c>,
    case: CachedStatement<'c>,
    subject: CachedStatement<'c>,
    txn: CachedStatement<'c>,
    analysis: CachedStatement<'c>,
    indicator: CachedStatement<'c>,
    evidence: CachedStatement<'c>,
    document: CachedStatement<'c>,
    photo: CachedStatement<'c>,
    email: CachedStatement<'c>,
    link: CachedStatement<'c>,
    annotation: CachedStatement<'c>,
    note: CachedStatement<'c>,
    custody: CachedStatement<'c>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            user: conn.prepare_cached(SQL_USER)?,
            user_viewed: conn.prepare_cached(SQL_USER_VIEWED)?,
            case: conn.prepare_cached(SQL_CASE)?,
            subject: conn.prepare_cached(SQL_SUBJECT)?,
            txn: conn.prepare_cached(SQL_TXN)?,
            analysis: conn.prepare_cached(SQL_ANALYSIS)?,
            indicator: conn.prepare_cached(SQL_INDICATOR)?,
            evidence: conn.prepare_cached(SQL_EVIDENCE)?,
            document: conn.prepare_cached(SQL_DOCUMENT)?,
            photo: conn.prepare_cached(SQL_PHOTO)?,
            email: conn.prepare_cached(SQL_EMAIL)?,
            link: conn.prepare_cached(SQL_LINK)?,
            annotation: conn.prepare_cached(SQL_ANNOTATION)?,
            note: conn.prepare_cached(SQL_NOTE)?,
            custody: conn.prepare_cached(SQL_CUSTODY)?,
        })
    }
}

/// Next free id per table; ids are assigned here rather than by SQLite so
/// children can reference parents without a round trip.
struct NextIds {
    subject: i64,
    txn: i64,
    analysis: i64,
    indicator: i64,
    evidence: i64,
    link: i64,
    annotation: i64,
    note: i64,
    custody: i64,
}

#[derive(Clone, Copy)]
enum EvidenceKind {
    Document,
    Photo,
    Email,
}

struct Generator<'c, 'o> {
    rng: StdRng,
    st: Stmts<'c>,
    opts: &'o SeedOptions,
    rows: u64,
    users: i64,
    next: NextIds,
    case_ids: Vec<String>,
    /// Evidence id range of each case, so cross-case links can target earlier cases.
    evidence_spans: Vec<(i64, i64)>,
    /// collected_at by evidence id, so links never predate their evidence.
    evidence_times: Vec<i64>,
    cross_links: u64,
}

impl<'c, 'o> Generator<'c, 'o> {
    fn new(conn: &'c Connection, opts: &'o SeedOptions) -> rusqlite::Result<Self> {
        Ok(Self {
            rng: StdRng::seed_from_u64(opts.seed),
            st: Stmts::new(conn)?,
            opts,
            rows: 0,
            users: 0,
            next: NextIds {
                subject: 1,
                txn: 1,
                analysis: 1,
                indicator: 1,
                evidence: 1,
                link: 1,
                annotation: 1,
                note: 1,
                custody: 1,
            },
            case_ids: Vec::with_capacity(opts.cases as usize),
            evidence_spans: Vec::with_capacity(opts.cases as usize),
            // Ids start at 1, so slot 0 is never read.
            evidence_times: vec![0],
            cross_links: 0,
        })
    }

    fn run(mut self) -> Result<(Vec<String>, u64), SeedError> {
        self.insert_users()?;
        for index in 0..self.opts.cases {
            self.insert_case(index)?;
        }
        self.set_last_viewed()?;
        Ok((self.case_ids, self.rows))
    }

    fn user(&mut self) -> i64 {
        self.rng.gen_range(1..=self.users)
    }

    fn insert_users(&mut self) -> rusqlite::Result<()> {
        self.users = 10 + i64::from(self.opts.cases / 10);
        let mut emails = HashSet::new();
        for id in 1..=self.users {
            let (first, last) = person(&mut self.rng);
            let role = if id == 1 {
                "admin"
            } else {
                *pick(&mut self.rng, USER_ROLES)
            };
            let mut local = String::new();
            push_slug(&mut local, first);
            local.push('.');
            push_slug(&mut local, last);
            if !emails.insert(local.clone()) {
                w!(local, "{id}");
            }
            let email = format!("{local}@casework.example");
            // Looks like an argon2id PHC string; the bytes are random, not a hash.
            let mut hash = String::from("$argon2id$v=19$m=19456,t=2,p=1$");
            push_b64(&mut self.rng, &mut hash, 22);
            hash.push('$');
            push_b64(&mut self.rng, &mut hash, 43);
            let created = between(&mut self.rng, START, START + 90 * DAY);
            self.st.user.execute(params![
                id,
                email,
                format!("{first} {last}"),
                role,
                hash,
                iso(created)
            ])?;
            self.rows += 1;
        }
        Ok(())
    }

    fn set_last_viewed(&mut self) -> rusqlite::Result<()> {
        for id in 1..=self.users {
            if id == 1 || self.rng.gen_bool(0.6) {
                let case = &self.case_ids[self.rng.gen_range(0..self.case_ids.len())];
                self.st.user_viewed.execute(params![id, case])?;
            }
        }
        Ok(())
    }

    fn insert_case(&mut self, index: u32) -> rusqlite::Result<()> {
        let m = self.opts.rows_per_case;
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes);
        let case_id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        let created = between(&mut self.rng, START, END - 90 * DAY);
        let updated = between(&mut self.rng, created, END);

        // The primary subject names the case, so it is drawn before the case row.
        let primary = if self.rng.gen_bool(0.6) {
            Party::person(&mut self.rng)
        } else {
            Party::company(&mut self.rng)
        };
        let fraud = pick(&mut self.rng, FRAUD_TYPES);
        let title = format!("{fraud}: {}", primary.name);
        let mut description = format!(
            "{fraud} involving {}, reported by {} on {}. ",
            primary.name,
            pick(&mut self.rng, REPORT_SOURCES),
            date(created)
        );
        push_sentence(&mut self.rng, &mut description);
        description.pop();
        let tenants = &self.opts.tenants;
        let tenant = &tenants[self.rng.gen_range(0..tenants.len())];
        let assigned = if self.rng.gen_bool(0.9) {
            Some(self.user())
        } else {
            None
        };
        self.st.case.execute(params![
            case_id,
            format!("FR-{}-{:06}", year(created), index + 1),
            title,
            description,
            pick(&mut self.rng, STATUSES),
            pick(&mut self.rng, PRIORITIES),
            tenant,
            assigned,
            iso(created),
            iso(updated)
        ])?;
        self.rows += 1;

        let subjects = self.insert_subjects(&case_id, primary, (m / 10).max(1))?;
        let txns = self.insert_transactions(&case_id, subjects, created, m.max(1))?;
        self.insert_analyses(&case_id, txns, created, (m / 20).max(1))?;
        // At least three so every subtype table gets a row for every case.
        let evidence = self.insert_evidence(&case_id, created, (m / 5).max(3))?;
        self.insert_links(index, evidence, (m / 10).max(1))?;
        self.insert_annotations(evidence, (m / 5).max(1))?;
        self.insert_notes(&case_id, created, (m / 10).max(1))?;
        self.insert_custody(evidence, (m / 5).max(1))?;
        self.evidence_spans.push(evidence);
        self.case_ids.push(case_id);
        Ok(())
    }

    fn insert_subjects(
        &mut self,
        case_id: &str,
        primary: Party,
        count: u32,
    ) -> rusqlite::Result<(i64, i64)> {
        let first = self.next.subject;
        let mut party = Some(primary);
        for _ in 0..count {
            let p = match party.take() {
                Some(p) => p,
                None if self.rng.gen_bool(0.7) => Party::person(&mut self.rng),
                None => Party::company(&mut self.rng),
            };
            let rng = &mut self.rng;
            let city = pick(rng, p.country.cities);
            let address = format!(
                "{} {}, {} {}, {}",
                pick(rng, &city.streets),
                rng.gen_range(1..240),
                rng.gen_range(1000..99999),
                city.name,
                p.country.code
            );
            let (kind, dob, national_id, email) = if p.is_person {
                let dob = between(rng, DOB_START, DOB_END);
                let mut email = String::new();
                push_slug(&mut email, &p.name);
                w!(
                    email,
                    "{}@{}",
                    rng.gen_range(1..99),
                    pick(rng, MAIL_DOMAINS)
                );
                let mut id = String::new();
                push_letters(rng, &mut id, 2);
                w!(id, "{:07}", rng.gen_range(0..10_000_000));
                ("person", Some(date(dob)), id, email)
            } else {
                let reg = match p.country.code {
                    "DE" | "AT" => format!("HRB {}", rng.gen_range(10_000..250_000)),
                    "CH" => format!(
                        "CHE-{:03}.{:03}.{:03}",
                        rng.gen_range(100..1000),
                        rng.gen_range(0..1000),
                        rng.gen_range(0..1000)
                    ),
                    "GB" => format!("{:08}", rng.gen_range(1_000_000..15_000_000)),
                    "LU" => format!("B{}", rng.gen_range(10_000..300_000)),
                    _ => format!("REG-{:08}", rng.gen_range(0..100_000_000)),
                };
                let mut email = String::from(if rng.gen_bool(0.5) {
                    "info@"
                } else {
                    "accounts@"
                });
                push_slug(&mut email, p.stem);
                email.push_str(".example");
                ("company", None, reg, email)
            };
            let phone = format!(
                "{} {} {} {}",
                p.country.dial,
                rng.gen_range(10..100),
                rng.gen_range(100..1000),
                rng.gen_range(1000..10000)
            );
            let note = if rng.gen_bool(0.6) {
                let company = Party::company(rng);
                Some(format!("{} of {}", pick(rng, SUBJECT_ROLES), company.name))
            } else {
                None
            };
            let email = rng.gen_bool(0.85).then_some(email);
            let phone = rng.gen_bool(0.75).then_some(phone);
            let id = self.next.subject;
            self.next.subject += 1;
            self.st.subject.execute(params![
                id,
                case_id,
                kind,
                p.name,
                dob,
                national_id,
                email,
                phone,
                address,
                p.country.code,
                note
            ])?;
            self.rows += 1;
        }
        Ok((first, self.next.subject))
    }

    fn insert_transactions(
        &mut self,
        case_id: &str,
        subjects: (i64, i64),
        created: i64,
        count: u32,
    ) -> rusqlite::Result<(i64, i64)> {
        let first = self.next.txn;
        // Activity precedes the case: it is what got reported.
        let window_start = (created - 540 * DAY).max(START);
        for _ in 0..count {
            let rng = &mut self.rng;
            let subject = rng
                .gen_bool(0.95)
                .then(|| rng.gen_range(subjects.0..subjects.1));
            let amount = amount_cents(rng);
            let currency = match rng.gen_range(0..100) {
                0..50 => "EUR",
                50..70 => "USD",
                70..85 => "GBP",
                _ => "CHF",
            };
            let occurred = between(rng, window_start, created + DAY);
            let cp = if rng.gen_bool(0.6) {
                Party::company(rng)
            } else {
                Party::person(rng)
            };
            let bank = rng.gen_bool(0.95).then(|| pick(rng, cp.country.banks));
            let iban = iban(rng, cp.country);
            let direction = if rng.gen_bool(0.5) { "in" } else { "out" };
            let year = year(occurred);
            let reference = match rng.gen_range(0..10) {
                0 | 1 => None,
                2 | 3 => Some(format!("INV-{year}-{:05}", rng.gen_range(1..100_000))),
                4 => Some(format!("Consulting fee Q{} {year}", rng.gen_range(1..=4))),
                5 => Some(format!("Loan repayment {}/12", rng.gen_range(1..12))),
                6 => Some(format!("PO {:07}", rng.gen_range(0..10_000_000))),
                7 => Some(format!("Management fee {}", pick(rng, MONTHS))),
                8 => Some("Refund".to_owned()),
                _ => Some(format!("Transfer {}", pick(rng, SERVICES))),
            };
            let id = self.next.txn;
            self.next.txn += 1;
            self.st.txn.execute(params![
                id,
                case_id,
                subject,
                amount,
                currency,
                iso(occurred),
                cp.name,
                bank,
                iban,
                direction,
                reference
            ])?;
            self.rows += 1;
        }
        Ok((first, self.next.txn))
    }

    fn insert_analyses(
        &mut self,
        case_id: &str,
        txns: (i64, i64),
        created: i64,
        count: u32,
    ) -> rusqlite::Result<()> {
        let mut notes = String::new();
        let mut detail = String::new();
        for _ in 0..count {
            let analyst = self.user();
            let rng = &mut self.rng;
            let id = self.next.analysis;
            self.next.analysis += 1;
            notes.clear();
            let has_notes = rng.gen_bool(0.7);
            if has_notes {
                push_sentence(rng, &mut notes);
                push_sentence(rng, &mut notes);
            }
            let at = between(rng, created, END);
            self.st.analysis.execute(params![
                id,
                case_id,
                analyst,
                pick(rng, MODELS),
                f64::from(rng.gen_range(0..=1000_u32)) / 1000.0,
                pick(rng, DECISIONS),
                has_notes.then_some(notes.trim_end()),
                iso(at)
            ])?;
            self.rows += 1;

            for _ in 0..rng.gen_range(1..=4) {
                let txn = rng.gen_bool(0.6).then(|| rng.gen_range(txns.0..txns.1));
                let kind = pick(rng, INDICATOR_TYPES);
                detail.clear();
                push_indicator_detail(rng, &mut detail, kind);
                let iid = self.next.indicator;
                self.next.indicator += 1;
                self.st.indicator.execute(params![
                    iid,
                    id,
                    txn,
                    kind,
                    f64::from(rng.gen_range(200..=1000_u32)) / 1000.0,
                    detail
                ])?;
                self.rows += 1;
            }
        }
        Ok(())
    }

    fn insert_evidence(
        &mut self,
        case_id: &str,
        created: i64,
        count: u32,
    ) -> rusqlite::Result<(i64, i64)> {
        let first = self.next.evidence;
        let mut text = String::new();
        for j in 0..count {
            let collector = self.user();
            let rng = &mut self.rng;
            let kind = match (j, rng.gen_range(0..10)) {
                (0, _) | (3.., 0..5) => EvidenceKind::Document,
                (1, _) | (3.., 5..8) => EvidenceKind::Photo,
                _ => EvidenceKind::Email,
            };
            let collected = between(rng, created, END);
            let mut sha = [0u8; 32];
            rng.fill(&mut sha);
            let mut sha_hex = String::with_capacity(64);
            for b in sha {
                w!(sha_hex, "{b:02x}");
            }
            let id = self.next.evidence;
            self.next.evidence += 1;
            self.evidence_times.push(collected);
            // Subtype content is drawn before the evidence row because the
            // title depends on it.
            text.clear();
            match kind {
                EvidenceKind::Document => {
                    let (mime, what) = *pick(rng, DOC_MIME);
                    let title = match what {
                        "Bank statement" => {
                            let country = *pick(rng, &ONSHORE);
                            let bank = pick(rng, country.banks);
                            format!("{what} {bank} {} {}", pick(rng, MONTHS), year(collected))
                        }
                        "Invoice" => format!("{what} {}", rng.gen_range(10_000..99_999)),
                        "Service agreement" | "KYC file" => {
                            format!("{what} {}", Party::company(rng).name)
                        }
                        _ => format!("{what} {}", date(collected - rng.gen_range(0..300) * DAY)),
                    };
                    let pages: i64 = match rng.gen_range(0..10) {
                        0..6 => rng.gen_range(1..6),
                        6..9 => rng.gen_range(6..40),
                        _ => rng.gen_range(40..400),
                    };
                    for p in 0..rng.gen_range(2..=4) {
                        if p > 0 {
                            text.push_str("\n\n");
                        }
                        for _ in 0..rng.gen_range(3..=6) {
                            push_sentence(rng, &mut text);
                        }
                        text.pop();
                    }
                    let size = pages * rng.gen_range(20_000..400_000);
                    self.st.evidence.execute(params![
                        id,
                        case_id,
                        "document",
                        title,
                        sha_hex,
                        size,
                        iso(collected),
                        collector
                    ])?;
                    self.st.document.execute(params![id, mime, pages, text])?;
                }
                EvidenceKind::Photo => {
                    let (width, height) = *pick(rng, RESOLUTIONS);
                    let taken = (collected - rng.gen_range(0..200 * DAY)).max(START);
                    let title = format!("Photo: {}", pick(rng, PHOTO_SUBJECTS));
                    // Some photos are screenshots or scans with EXIF stripped.
                    let (make, model, exif, lat, lon) = if rng.gen_bool(0.9) {
                        let (make, model, software) = *pick(rng, CAMERAS);
                        let gps = rng.gen_bool(0.6).then(|| {
                            let country = *pick(rng, &ONSHORE);
                            let city = pick(rng, country.cities);
                            (
                                round6(city.lat + rng.gen_range(-0.05..0.05)),
                                round6(city.lon + rng.gen_range(-0.05..0.05)),
                            )
                        });
                        w!(
                            text,
                            r#"{{"Make":"{make}","Model":"{model}","Software":"{software}","DateTimeOriginal":"{}","ExposureTime":"{}","FNumber":{},"ISOSpeedRatings":{},"Orientation":{},"PixelXDimension":{width},"PixelYDimension":{height}"#,
                            exif_time(taken),
                            pick(rng, EXPOSURES),
                            pick(rng, F_NUMBERS),
                            pick(rng, ISOS),
                            if width >= height { 1 } else { 6 }
                        );
                        if let Some((lat, lon)) = gps {
                            w!(text, r#","GPSLatitude":{lat:.6},"GPSLongitude":{lon:.6}"#);
                        }
                        text.push('}');
                        (
                            Some(make),
                            Some(model),
                            Some(text.as_str()),
                            gps.map(|g| g.0),
                            gps.map(|g| g.1),
                        )
                    } else {
                        (None, None, None, None, None)
                    };
                    let size = width * height * rng.gen_range(2..6) / 10;
                    self.st.evidence.execute(params![
                        id,
                        case_id,
                        "photo",
                        title,
                        sha_hex,
                        size,
                        iso(collected),
                        collector
                    ])?;
                    self.st.photo.execute(params![
                        id,
                        width,
                        height,
                        make,
                        model,
                        exif.is_some().then(|| iso(taken)),
                        lat,
                        lon,
                        exif
                    ])?;
                }
                EvidenceKind::Email => {
                    let from = Party::person(rng);
                    let sender = from.email(rng);
                    let to = Party::person(rng);
                    let mut recipients = to.email(rng);
                    for _ in 1..rng.gen_range(1..=3) {
                        recipients.push_str(", ");
                        recipients.push_str(&Party::person(rng).email(rng));
                    }
                    let subject = pick(rng, EMAIL_SUBJECTS);
                    let sent = (collected - rng.gen_range(0..120 * DAY)).max(START);
                    let greet = to.name.split_once(' ').map_or(to.name.as_str(), |n| n.0);
                    w!(text, "Dear {greet},\n\n");
                    for _ in 0..rng.gen_range(2..=4) {
                        text.push_str(pick::<&str>(rng, EMAIL_SENTENCES));
                        text.push(' ');
                    }
                    text.pop();
                    w!(text, "\n\nBest regards,\n{}", from.name);
                    let size = i64::try_from(text.len()).unwrap_or(i64::MAX)
                        + rng.gen_range(2_000..900_000);
                    self.st.evidence.execute(params![
                        id,
                        case_id,
                        "email",
                        format!("Email: {subject}"),
                        sha_hex,
                        size,
                        iso(collected),
                        collector
                    ])?;
                    self.st.email.execute(params![
                        id,
                        sender,
                        recipients,
                        subject,
                        iso(sent),
                        text
                    ])?;
                }
            }
            self.rows += 2;
        }
        Ok((first, self.next.evidence))
    }

    fn insert_links(&mut self, index: u32, own: (i64, i64), count: u32) -> rusqlite::Result<()> {
        for j in 0..count {
            // The first link stays inside the case so every case has one.
            let cross = index > 0 && j > 0 && self.rng.gen_ratio(1, 10);
            self.insert_link(index, own, cross)?;
        }
        // Guarantee the exporter meets at least one cross-case link.
        if index > 0 && self.cross_links == 0 {
            self.insert_link(index, own, true)?;
        }
        Ok(())
    }

    fn insert_link(&mut self, index: u32, own: (i64, i64), cross: bool) -> rusqlite::Result<()> {
        let rng = &mut self.rng;
        let a = rng.gen_range(own.0..own.1);
        let (from, to, relation) = if cross {
            let other = self.evidence_spans[rng.gen_range(0..index as usize)];
            let b = rng.gen_range(other.0..other.1);
            self.cross_links += 1;
            // Both directions, so the exporter meets incoming and outgoing ones.
            let rel = pick(rng, CROSS_RELATIONS);
            if rng.gen_bool(0.5) {
                (a, b, rel)
            } else {
                (b, a, rel)
            }
        } else {
            let b = rng.gen_range(own.0..own.1 - 1);
            let b = if b >= a { b + 1 } else { b };
            (a, b, pick(rng, LINK_RELATIONS))
        };
        let after = self.evidence_times[from as usize].max(self.evidence_times[to as usize]);
        let at = between(rng, after, END);
        let id = self.next.link;
        self.next.link += 1;
        self.st
            .link
            .execute(params![id, from, to, relation, iso(at)])?;
        self.rows += 1;
        Ok(())
    }

    fn insert_annotations(&mut self, own: (i64, i64), count: u32) -> rusqlite::Result<()> {
        for _ in 0..count {
            let author = self.user();
            let rng = &mut self.rng;
            let evidence = rng.gen_range(own.0..own.1);
            let at = between(rng, self.evidence_times[evidence as usize], END);
            let id = self.next.annotation;
            self.next.annotation += 1;
            self.st.annotation.execute(params![
                id,
                evidence,
                author,
                pick(rng, ANNOTATIONS),
                iso(at)
            ])?;
            self.rows += 1;
        }
        Ok(())
    }

    fn insert_notes(&mut self, case_id: &str, created: i64, count: u32) -> rusqlite::Result<()> {
        let first = self.next.note;
        let mut times = Vec::with_capacity(count as usize);
        for j in 0..count {
            let author = self.user();
            let rng = &mut self.rng;
            // Replies only ever point at an earlier note of this same case.
            let parent =
                (j > 0 && rng.gen_bool(0.35)).then(|| rng.gen_range(first..self.next.note));
            let (body, after) = match parent {
                Some(p) => (pick(rng, REPLIES), times[(p - first) as usize]),
                None => (pick(rng, NOTES), created),
            };
            let at = between(rng, after, END);
            times.push(at);
            let id = self.next.note;
            self.next.note += 1;
            self.st
                .note
                .execute(params![id, case_id, author, parent, body, iso(at)])?;
            self.rows += 1;
        }
        Ok(())
    }

    fn insert_custody(&mut self, own: (i64, i64), count: u32) -> rusqlite::Result<()> {
        let span = own.1 - own.0;
        for j in 0..i64::from(count) {
            let actor = self.user();
            let rng = &mut self.rng;
            // Pairs of events per item: its collection, then one follow-up.
            let evidence = own.0 + (j / 2) % span;
            let collected = self.evidence_times[evidence as usize];
            let (action, at) = if j % 2 == 0 {
                ("collected", collected)
            } else {
                (*pick(rng, CUSTODY_FOLLOW_UPS), between(rng, collected, END))
            };
            let details = match action {
                "collected" => Some(format!("Seal #{:06} applied", rng.gen_range(0..1_000_000))),
                "hashed" | "imaged" => Some("SHA-256 verified against acquisition hash".to_owned()),
                "transferred" => {
                    let (f, l) = person(rng);
                    Some(format!("Handed over to {f} {l}"))
                }
                "sealed" => Some(format!("Seal #{:06} intact", rng.gen_range(0..1_000_000))),
                _ => None,
            };
            let id = self.next.custody;
            self.next.custody += 1;
            self.st.custody.execute(params![
                id,
                evidence,
                actor,
                action,
                iso(at),
                pick(rng, CUSTODY_LOCATIONS),
                details
            ])?;
            self.rows += 1;
        }
        Ok(())
    }
}

/// A person or company with the country its bank and address come from.
struct Party {
    name: String,
    /// For companies the brand part of the name, used for the mail domain.
    stem: &'static str,
    is_person: bool,
    country: &'static Country,
}

impl Party {
    fn person(rng: &mut StdRng) -> Self {
        let (first, last) = person(rng);
        let country = if rng.gen_bool(0.9) {
            *pick(rng, &ONSHORE)
        } else {
            *pick(rng, &OFFSHORE)
        };
        Self {
            name: format!("{first} {last}"),
            stem: "",
            is_person: true,
            country,
        }
    }

    fn company(rng: &mut StdRng) -> Self {
        let stem = *pick(rng, COMPANY_STEMS);
        let (form, country) = *pick(rng, &COMPANY_FORMS);
        Self {
            name: format!("{stem} {} {form}", pick(rng, COMPANY_TRADES)),
            stem,
            is_person: false,
            country,
        }
    }

    fn email(&self, rng: &mut StdRng) -> String {
        let mut out = String::new();
        push_slug(&mut out, &self.name);
        out.push('@');
        out.push_str(pick::<&str>(rng, MAIL_DOMAINS));
        out
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

fn person(rng: &mut StdRng) -> (&'static str, &'static str) {
    (*pick(rng, FIRST_NAMES), *pick(rng, LAST_NAMES))
}

/// Uniform in `[lo, hi)`, or `lo` when the range is empty.
fn between(rng: &mut StdRng, lo: i64, hi: i64) -> i64 {
    if hi > lo { rng.gen_range(lo..hi) } else { lo }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Long-tailed amount in cents, built from integer buckets rather than
/// `powf`/`exp` so the output cannot differ between libm implementations.
fn amount_cents(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..100) {
        // Structuring: just under a 10,000 reporting threshold.
        0..5 => rng.gen_range(900_000..1_000_000),
        5..15 => rng.gen_range(1..=50) * 50_000,
        r => {
            let magnitude: u32 = match r {
                15..42 => 1,
                42..72 => 2,
                72..91 => 3,
                91..97 => 4,
                97..99 => 5,
                _ => 6,
            };
            let lo = 10_i64.pow(magnitude) * 100;
            rng.gen_range(lo..lo * 10)
        }
    }
}

fn push_money(out: &mut String, cents: i64) {
    let units = cents / 100;
    let digits = units.to_string();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    w!(out, ".{:02}", cents % 100);
}

/// Appends one sentence of investigator prose plus a trailing space.
fn push_sentence(rng: &mut StdRng, out: &mut String) {
    match rng.gen_range(0..12) {
        0 => {
            let (f, l) = person(rng);
            let to = Party::company(rng);
            let day = date(between(rng, START, END));
            w!(out, "On {day}, {f} {l} instructed a transfer of ");
            push_money(out, amount_cents(rng));
            w!(out, " EUR to {}.", to.name);
        }
        1 => {
            let c = Party::company(rng);
            w!(
                out,
                "Invoice {} from {} lists {} services that could not be matched to any delivery.",
                rng.gen_range(10_000..99_999),
                c.name,
                pick(rng, SERVICES)
            );
        }
        2 => {
            let (f1, l1) = person(rng);
            let (f2, l2) = person(rng);
            w!(
                out,
                "{f1} {l1} stated that the payment had been approved by {f2} {l2} by telephone."
            );
        }
        3 => w!(
            out,
            "Account statements show {} incoming transfers just below 10,000 EUR within {} days.",
            rng.gen_range(3..30),
            rng.gen_range(2..30)
        ),
        4 => w!(
            out,
            "The signature on page {} differs from the specimen held on file.",
            rng.gen_range(1..20)
        ),
        5 => {
            let country = pick(rng, &OFFSHORE);
            w!(
                out,
                "Funds were forwarded the same day to an account at {} in {}.",
                pick(rng, country.banks),
                pick(rng, country.cities).name
            );
        }
        6 => out.push_str("No commercial rationale for the transaction was documented."),
        7 => w!(
            out,
            "The contract is dated {} but the file metadata shows it was created {} days later.",
            date(between(rng, START, END)),
            rng.gen_range(2..200)
        ),
        8 => {
            let c = Party::company(rng);
            w!(
                out,
                "{} shares a registered address with {} other entities in {}.",
                c.name,
                rng.gen_range(5..400),
                pick(rng, c.country.cities).name
            );
        }
        9 => {
            let c = Party::company(rng);
            w!(
                out,
                "The beneficial owner of {} could not be verified from public registers.",
                c.name
            );
        }
        10 => {
            let p = Party::person(rng);
            w!(
                out,
                "{} holds signing authority on {} accounts, including one at {}.",
                p.name,
                rng.gen_range(2..12),
                pick(rng, p.country.banks)
            );
        }
        _ => w!(
            out,
            "Several payments reference purchase order {:07} with slightly different amounts.",
            rng.gen_range(0..10_000_000)
        ),
    }
    // A company name ending in "S.A." already closes the sentence.
    if out.ends_with("..") {
        out.pop();
    }
    out.push(' ');
}

fn push_indicator_detail(rng: &mut StdRng, out: &mut String, kind: &str) {
    match kind {
        "structuring" => w!(
            out,
            "{} deposits between 9,000 and 9,999 within {} days",
            rng.gen_range(3..25),
            rng.gen_range(2..30)
        ),
        "rapid_movement" => w!(
            out,
            "{}% of inbound funds moved on within {} hours",
            rng.gen_range(60..100),
            rng.gen_range(1..48)
        ),
        "high_risk_country" => w!(
            out,
            "counterparty domiciled in {}",
            pick(rng, &OFFSHORE).code
        ),
        "round_amounts" => w!(
            out,
            "{}% of transfers are round amounts",
            rng.gen_range(30..95)
        ),
        "shell_company" => w!(
            out,
            "{} has no employees and a nominee director",
            Party::company(rng).name
        ),
        _ => w!(
            out,
            "rule R-{:03} fired {} times",
            rng.gen_range(1..400),
            rng.gen_range(1..20)
        ),
    }
}

/// An IBAN with valid mod-97 check digits, or None for countries without IBANs.
fn iban(rng: &mut StdRng, country: &Country) -> Option<String> {
    if country.bban.is_empty() {
        return None;
    }
    let mut bban = String::with_capacity(country.bban.len());
    for c in country.bban.bytes() {
        let ch = if c == b'9' {
            rng.gen_range(b'0'..=b'9')
        } else {
            rng.gen_range(b'A'..=b'Z')
        };
        bban.push(char::from(ch));
    }
    // ISO 13616: check digits make (BBAN + country + check) ≡ 1 (mod 97).
    let mut rem = 0u32;
    for c in bban.chars().chain(country.code.chars()).chain("00".chars()) {
        rem = match c.to_digit(36) {
            Some(v) if v >= 10 => (rem * 100 + v) % 97,
            Some(v) => (rem * 10 + v) % 97,
            None => rem,
        };
    }
    Some(format!("{}{:02}{bban}", country.code, 98 - rem))
}

fn push_slug(out: &mut String, s: &str) {
    let mut dot = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'ä' | 'á' | 'à' | 'â' | 'å' => 'a',
            'ö' | 'ó' | 'ò' | 'ô' | 'ø' => 'o',
            'ü' | 'ú' | 'ù' | 'û' => 'u',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' | 'ı' => 'i',
            'ç' => 'c',
            'ñ' => 'n',
            'ł' => 'l',
            'ş' => 's',
            'ý' => 'y',
            c => c,
        };
        if c.is_ascii_alphanumeric() {
            out.push(c);
            dot = false;
        } else if c == ' ' && !dot {
            out.push('.');
            dot = true;
        }
    }
}

fn push_letters(rng: &mut StdRng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from(rng.gen_range(b'A'..=b'Z')));
    }
}

fn push_b64(rng: &mut StdRng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from(*pick(rng, B64)));
    }
}

fn civil(secs: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
}

fn year(secs: i64) -> i32 {
    civil(secs).year()
}

/// `2025-03-14T09:26:53Z`
fn iso(secs: i64) -> String {
    let t = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2025-03-14`
fn date(secs: i64) -> String {
    let t = civil(secs);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// EXIF's own `2025:03:14 09:26:53` layout.
fn exif_time(secs: i64) -> String {
    let t = civil(secs);
    format!(
        "{:04}:{:02}:{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn small(seed: u64) -> SeedOptions {
        SeedOptions {
            cases: 4,
            rows_per_case: 60,
            seed,
            tenants: vec!["north".to_owned(), "south".to_owned()],
        }
    }

    fn seeded(
        opts: &SeedOptions,
    ) -> Result<(tempfile::TempDir, Connection, SeedReport), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut conn = Connection::open(dir.path().join("cases.db"))?;
        let report = seed_connection(&mut conn, opts)?;
        Ok((dir, conn, report))
    }

    fn dump(conn: &Connection) -> rusqlite::Result<Vec<String>> {
        let mut out = Vec::new();
        for table in TABLES {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))?;
            let cols = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let mut line = format!("{table}:");
                for i in 0..cols {
                    line.push_str(&format!("{:?}|", row.get_ref(i)?));
                }
                out.push(line);
            }
        }
        Ok(out)
    }

    fn count(conn: &Connection, sql: &str, case_id: &str) -> rusqlite::Result<i64> {
        conn.query_row(sql, [case_id], |r| r.get(0))
    }

    #[test]
    fn same_seed_same_rows_other_seed_differs() -> TestResult {
        let (_d1, c1, r1) = seeded(&small(7))?;
        let (_d2, c2, r2) = seeded(&small(7))?;
        let (_d3, c3, _) = seeded(&small(8))?;
        let a = dump(&c1)?;
        assert_eq!(a, dump(&c2)?);
        assert_ne!(a, dump(&c3)?);
        assert_eq!(r1.case_ids, r2.case_ids);
        assert_eq!(r1.rows, r2.rows);
        Ok(())
    }

    #[test]
    fn every_case_has_rows_in_every_table() -> TestResult {
        // rows_per_case 0 exercises the per-table minimums.
        for rows_per_case in [0, 60] {
            let opts = SeedOptions {
                rows_per_case,
                ..small(1)
            };
            let (_dir, conn, report) = seeded(&opts)?;
            assert_eq!(report.case_ids.len(), 4);
            let users: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            assert!(users >= 10);
            let viewed: i64 = conn.query_row(
                "SELECT COUNT(*) FROM users WHERE last_viewed_case_id IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            assert!(viewed >= 1);
            let per_case = [
                "SELECT COUNT(*) FROM cases WHERE id = ?1",
                "SELECT COUNT(*) FROM subjects WHERE case_id = ?1",
                "SELECT COUNT(*) FROM transactions WHERE case_id = ?1",
                "SELECT COUNT(*) FROM analysis_results WHERE case_id = ?1",
                "SELECT COUNT(*) FROM indicators i JOIN analysis_results a ON a.id = i.analysis_id WHERE a.case_id = ?1",
                "SELECT COUNT(*) FROM evidence WHERE case_id = ?1",
                "SELECT COUNT(*) FROM evidence_documents d JOIN evidence e ON e.id = d.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_photos p JOIN evidence e ON e.id = p.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_emails m JOIN evidence e ON e.id = m.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_links l JOIN evidence a ON a.id = l.from_evidence_id JOIN evidence b ON b.id = l.to_evidence_id WHERE a.case_id = ?1 AND b.case_id = ?1",
                "SELECT COUNT(*) FROM annotations x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM notes WHERE case_id = ?1",
                "SELECT COUNT(*) FROM custody_events x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1",
            ];
            for case_id in &report.case_ids {
                for sql in per_case {
                    assert!(count(&conn, sql, case_id)? > 0, "{sql} empty for {case_id}");
                }
            }
            let total: i64 = TABLES
                .iter()
                .map(|t| {
                    conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .sum::<rusqlite::Result<i64>>()?;
            assert_eq!(u64::try_from(total)?, report.rows);
        }
        Ok(())
    }

    #[test]
    fn cross_case_links_exist_and_replies_stay_in_case() -> TestResult {
        for opts in [
            small(3),
            SeedOptions {
                cases: 2,
                rows_per_case: 5,
                ..small(3)
            },
        ] {
            let (_dir, conn, _) = seeded(&opts)?;
            let cross: i64 = conn.query_row(
                "SELECT COUNT(*) FROM evidence_links l
                 JOIN evidence a ON a.id = l.from_evidence_id
                 JOIN evidence b ON b.id = l.to_evidence_id
                 WHERE a.case_id <> b.case_id",
                [],
                |r| r.get(0),
            )?;
            assert!(cross >= 1);
        }
        let (_dir, conn, _) = seeded(&small(3))?;
        let replies: i64 = conn.query_row(
            "SELECT COUNT(*) FROM notes WHERE parent_note_id IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        assert!(replies > 0);
        let stray: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM notes n JOIN notes p ON p.id = n.parent_note_id
                     WHERE n.case_id <> p.case_id)
                  + (SELECT COUNT(*) FROM indicators i
                     JOIN analysis_results a ON a.id = i.analysis_id
                     JOIN transactions t ON t.id = i.transaction_id
                     WHERE a.case_id <> t.case_id)
                  + (SELECT COUNT(*) FROM transactions t JOIN subjects s ON s.id = t.subject_id
                     WHERE t.case_id <> s.case_id)",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(stray, 0);
        Ok(())
    }

    #[test]
    fn single_case_has_no_cross_links() -> TestResult {
        let (_dir, conn, _) = seeded(&SeedOptions {
            cases: 1,
            ..small(5)
        })?;
        let cross: i64 = conn.query_row(
            "SELECT COUNT(*) FROM evidence_links l
             JOIN evidence a ON a.id = l.from_evidence_id
             JOIN evidence b ON b.id = l.to_evidence_id
             WHERE a.case_id <> b.case_id",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(cross, 0);
        Ok(())
    }

    #[test]
    fn foreign_keys_and_integrity_hold() -> TestResult {
        let (_dir, conn, _) = seeded(&small(11))?;
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        let violations = stmt.query_map([], |r| r.get::<_, String>(0))?.count();
        assert_eq!(violations, 0);
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(ok, "ok");
        Ok(())
    }

    #[test]
    fn values_look_plausible() -> TestResult {
        let (_dir, conn, _) = seeded(&small(2))?;
        let bad_ts: i64 = conn.query_row(
            "SELECT COUNT(*) FROM transactions
             WHERE occurred_at NOT GLOB '202[345]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(bad_ts, 0);
        let mut stmt = conn.prepare(
            "SELECT counterparty_iban FROM transactions WHERE counterparty_iban IS NOT NULL",
        )?;
        let ibans = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for iban in ibans {
            let iban = iban?;
            let rearranged = format!("{}{}", &iban[4..], &iban[..4]);
            let rem = rearranged
                .chars()
                .fold(0u32, |rem, c| match c.to_digit(36) {
                    Some(v) if v >= 10 => (rem * 100 + v) % 97,
                    Some(v) => (rem * 10 + v) % 97,
                    None => rem,
                });
            assert_eq!(rem, 1, "bad IBAN {iban}");
        }
        let id: String = conn.query_row("SELECT id FROM cases LIMIT 1", [], |r| r.get(0))?;
        assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 4);
        Ok(())
    }

    #[test]
    fn seed_demo_refuses_existing_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("demo.db");
        let opts = SeedOptions {
            cases: 2,
            rows_per_case: 20,
            ..SeedOptions::default()
        };
        let report = seed_demo(&path, &opts)?;
        assert_eq!(report.bytes, fs::metadata(&path)?.len());
        assert!(report.rows > 0 && report.rows_per_sec() > 0.0);
        assert!(matches!(seed_demo(&path, &opts), Err(SeedError::Exists(_))));
        // A pre-created empty file (e.g. from mktemp) is accepted.
        let empty = dir.path().join("empty.db");
        fs::File::create(&empty)?;
        seed_demo(&empty, &opts)?;
        Ok(())
    }

    #[test]
    fn rejects_bad_options_and_reseeding() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.db");
        let none = SeedOptions {
            cases: 0,
            ..SeedOptions::default()
        };
        assert!(matches!(seed_demo(&path, &none), Err(SeedError::NoCases)));
        let no_tenant = SeedOptions {
            tenants: vec![],
            ..SeedOptions::default()
        };
        assert!(matches!(
            seed_demo(&path, &no_tenant),
            Err(SeedError::NoTenants)
        ));
        assert!(!path.exists());

        let (_dir, mut conn, _) = seeded(&small(1))?;
        assert!(matches!(
            seed_connection(&mut conn, &small(1)),
            Err(SeedError::NotEmpty("users"))
        ));
        Ok(())
    }
}
