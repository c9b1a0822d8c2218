//! The generator: rows of every table, drawn from one seeded random
//! generator, inserted table by table with cached statements.

use super::text::*;
use super::words::*;
use super::{DAY, DOB_END, DOB_START, END, START, SeedError, SeedOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{CachedStatement, Connection, params};
use std::collections::HashSet;
use std::fmt::Write as _;

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

/// What every evidence row has, whatever its subtype.
struct EvidenceRow<'a> {
    id: i64,
    case_id: &'a str,
    sha_hex: String,
    collected: i64,
    collector: i64,
}

#[derive(Clone, Copy)]
enum EvidenceKind {
    Document,
    Photo,
    Email,
}

pub(super) struct Generator<'c, 'o> {
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
    pub(super) fn new(conn: &'c Connection, opts: &'o SeedOptions) -> rusqlite::Result<Self> {
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

    pub(super) fn run(mut self) -> Result<(Vec<String>, u64), SeedError> {
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

    // Long: one row's columns drawn in a fixed order; the order is the seed's output.

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

    // Long: one row's columns drawn in a fixed order; the order is the seed's output.

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
            let e = EvidenceRow {
                id: self.next.evidence,
                case_id,
                sha_hex,
                collected,
                collector,
            };
            self.next.evidence += 1;
            self.evidence_times.push(collected);
            // Subtype content is drawn before the evidence row because the
            // title depends on it.
            text.clear();
            match kind {
                EvidenceKind::Document => self.insert_document(&e, &mut text)?,
                EvidenceKind::Photo => self.insert_photo(&e, &mut text)?,
                EvidenceKind::Email => self.insert_email(&e, &mut text)?,
            }
            self.rows += 2;
        }
        Ok((first, self.next.evidence))
    }

    /// The `evidence` row itself, once its subtype decided title and size.
    fn insert_evidence_row(
        &mut self,
        e: &EvidenceRow<'_>,
        kind: &str,
        title: &str,
        size: i64,
    ) -> rusqlite::Result<()> {
        self.st.evidence.execute(params![
            e.id,
            e.case_id,
            kind,
            title,
            e.sha_hex,
            size,
            iso(e.collected),
            e.collector
        ])?;
        Ok(())
    }

    fn insert_document(&mut self, e: &EvidenceRow<'_>, text: &mut String) -> rusqlite::Result<()> {
        let rng = &mut self.rng;
        let collected = e.collected;
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
                push_sentence(rng, text);
            }
            text.pop();
        }
        let size = pages * rng.gen_range(20_000..400_000);
        self.insert_evidence_row(e, "document", &title, size)?;
        self.st
            .document
            .execute(params![e.id, mime, pages, text.as_str()])?;
        Ok(())
    }

    fn insert_photo(&mut self, e: &EvidenceRow<'_>, text: &mut String) -> rusqlite::Result<()> {
        let rng = &mut self.rng;
        let (width, height) = *pick(rng, RESOLUTIONS);
        let taken = (e.collected - rng.gen_range(0..200 * DAY)).max(START);
        let title = format!("Photo: {}", pick(rng, PHOTO_SUBJECTS));
        // Some photos are screenshots or scans with EXIF stripped.
        let (make, model, lat, lon) = if rng.gen_bool(0.9) {
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
            (Some(make), Some(model), gps.map(|g| g.0), gps.map(|g| g.1))
        } else {
            (None, None, None, None)
        };
        let exif = make.is_some().then_some(text.as_str());
        let size = width * height * rng.gen_range(2..6) / 10;
        self.insert_evidence_row(e, "photo", &title, size)?;
        self.st.photo.execute(params![
            e.id,
            width,
            height,
            make,
            model,
            exif.is_some().then(|| iso(taken)),
            lat,
            lon,
            exif
        ])?;
        Ok(())
    }

    fn insert_email(&mut self, e: &EvidenceRow<'_>, text: &mut String) -> rusqlite::Result<()> {
        let rng = &mut self.rng;
        let from = Party::person(rng);
        let sender = from.email(rng);
        let to = Party::person(rng);
        let mut recipients = to.email(rng);
        for _ in 1..rng.gen_range(1..=3) {
            recipients.push_str(", ");
            recipients.push_str(&Party::person(rng).email(rng));
        }
        let subject = pick(rng, EMAIL_SUBJECTS);
        let sent = (e.collected - rng.gen_range(0..120 * DAY)).max(START);
        let greet = to.name.split_once(' ').map_or(to.name.as_str(), |n| n.0);
        w!(text, "Dear {greet},\n\n");
        for _ in 0..rng.gen_range(2..=4) {
            text.push_str(pick::<&str>(rng, EMAIL_SENTENCES));
            text.push(' ');
        }
        text.pop();
        w!(text, "\n\nBest regards,\n{}", from.name);
        let size = i64::try_from(text.len()).unwrap_or(i64::MAX) + rng.gen_range(2_000..900_000);
        self.insert_evidence_row(e, "email", &format!("Email: {subject}"), size)?;
        self.st.email.execute(params![
            e.id,
            sender,
            recipients,
            subject,
            iso(sent),
            text.as_str()
        ])?;
        Ok(())
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
