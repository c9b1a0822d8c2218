-- Demo schema of a fraud / forensic case-management system: the source
-- database that case-export reads from. `cases` is the export root; `users`
-- is system data that must never leave in an export.
--
-- Conventions: timestamps are ISO-8601 UTC text (2025-03-14T09:26:53Z),
-- money is integer minor units (cents) next to an ISO-4217 currency code,
-- and every foreign-key column has its own index because the exporter walks
-- the FK graph in both directions through them.
--
-- Idempotent (IF NOT EXISTS) so it can be applied to an existing file.

CREATE TABLE IF NOT EXISTS users (
    id                  INTEGER PRIMARY KEY,
    email               TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL,
    role                TEXT NOT NULL
                        CHECK (role IN ('admin', 'supervisor', 'investigator', 'analyst', 'auditor')),
    password_hash       TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    -- Points back at cases on purpose: following FKs from a case reaches
    -- users, so the exporter's exclude list must stop it.
    last_viewed_case_id TEXT REFERENCES cases(id)
);
CREATE INDEX IF NOT EXISTS users_last_viewed_case_id_idx ON users(last_viewed_case_id);

CREATE TABLE IF NOT EXISTS cases (
    id          TEXT PRIMARY KEY,  -- UUID
    case_number TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('open', 'triage', 'investigating', 'escalated', 'closed', 'archived')),
    priority    TEXT NOT NULL
                CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    tenant      TEXT NOT NULL,
    assigned_to INTEGER REFERENCES users(id),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_assigned_to_idx ON cases(assigned_to);
CREATE INDEX IF NOT EXISTS cases_tenant_idx ON cases(tenant);

CREATE TABLE IF NOT EXISTS subjects (
    id            INTEGER PRIMARY KEY,
    case_id       TEXT NOT NULL REFERENCES cases(id),
    kind          TEXT NOT NULL CHECK (kind IN ('person', 'company')),
    full_name     TEXT NOT NULL,
    date_of_birth TEXT,  -- YYYY-MM-DD, persons only
    national_id   TEXT,  -- passport / ID number, or register number for companies
    email         TEXT,
    phone         TEXT,
    address       TEXT,
    nationality   TEXT,  -- ISO-3166 alpha-2
    notes         TEXT
);
CREATE INDEX IF NOT EXISTS subjects_case_id_idx ON subjects(case_id);

CREATE TABLE IF NOT EXISTS transactions (
    id                INTEGER PRIMARY KEY,
    case_id           TEXT NOT NULL REFERENCES cases(id),
    subject_id        INTEGER REFERENCES subjects(id),
    amount            INTEGER NOT NULL CHECK (amount > 0),  -- cents
    currency          TEXT NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP', 'CHF')),
    occurred_at       TEXT NOT NULL,
    counterparty      TEXT NOT NULL,
    counterparty_bank TEXT,
    counterparty_iban TEXT,
    direction         TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    reference         TEXT
);
CREATE INDEX IF NOT EXISTS transactions_case_id_idx ON transactions(case_id);
CREATE INDEX IF NOT EXISTS transactions_subject_id_idx ON transactions(subject_id);

CREATE TABLE IF NOT EXISTS analysis_results (
    id             INTEGER PRIMARY KEY,
    case_id        TEXT NOT NULL REFERENCES cases(id),
    analyst_id     INTEGER REFERENCES users(id),
    model          TEXT NOT NULL,
    risk_score     REAL NOT NULL CHECK (risk_score BETWEEN 0.0 AND 1.0),
    decision       TEXT NOT NULL,
    reviewer_notes TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS analysis_results_case_id_idx ON analysis_results(case_id);
CREATE INDEX IF NOT EXISTS analysis_results_analyst_id_idx ON analysis_results(analyst_id);

CREATE TABLE IF NOT EXISTS indicators (
    id             INTEGER PRIMARY KEY,
    analysis_id    INTEGER NOT NULL REFERENCES analysis_results(id),
    transaction_id INTEGER REFERENCES transactions(id),
    indicator_type TEXT NOT NULL,
    confidence     REAL NOT NULL CHECK (confidence BETWEEN 0.0 AND 1.0),
    detail         TEXT
);
CREATE INDEX IF NOT EXISTS indicators_analysis_id_idx ON indicators(analysis_id);
CREATE INDEX IF NOT EXISTS indicators_transaction_id_idx ON indicators(transaction_id);

CREATE TABLE IF NOT EXISTS evidence (
    id           INTEGER PRIMARY KEY,
    case_id      TEXT NOT NULL REFERENCES cases(id),
    kind         TEXT NOT NULL CHECK (kind IN ('document', 'photo', 'email')),
    title        TEXT NOT NULL,
    sha256       TEXT NOT NULL,  -- lowercase hex
    size_bytes   INTEGER NOT NULL CHECK (size_bytes >= 0),
    collected_at TEXT NOT NULL,
    collected_by INTEGER REFERENCES users(id)
);
CREATE INDEX IF NOT EXISTS evidence_case_id_idx ON evidence(case_id);
CREATE INDEX IF NOT EXISTS evidence_collected_by_idx ON evidence(collected_by);

-- 1:1 subtypes of evidence, selected by evidence.kind. The primary key is
-- the FK, so it needs no separate index.
CREATE TABLE IF NOT EXISTS evidence_documents (
    evidence_id    INTEGER PRIMARY KEY REFERENCES evidence(id),
    mime_type      TEXT NOT NULL,
    page_count     INTEGER NOT NULL CHECK (page_count > 0),
    extracted_text TEXT
);

CREATE TABLE IF NOT EXISTS evidence_photos (
    evidence_id  INTEGER PRIMARY KEY REFERENCES evidence(id),
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    camera_make  TEXT,
    camera_model TEXT,
    taken_at     TEXT,
    gps_lat      REAL,
    gps_lon      REAL,
    exif_json    TEXT  -- raw EXIF as a JSON object
);

CREATE TABLE IF NOT EXISTS evidence_emails (
    evidence_id INTEGER PRIMARY KEY REFERENCES evidence(id),
    sender      TEXT NOT NULL,
    recipients  TEXT NOT NULL,  -- comma-separated addresses
    subject     TEXT NOT NULL,
    sent_at     TEXT NOT NULL,
    body        TEXT NOT NULL
);

-- May connect evidence of two different cases.
CREATE TABLE IF NOT EXISTS evidence_links (
    id               INTEGER PRIMARY KEY,
    from_evidence_id INTEGER NOT NULL REFERENCES evidence(id),
    to_evidence_id   INTEGER NOT NULL REFERENCES evidence(id),
    relation         TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_links_from_evidence_id_idx ON evidence_links(from_evidence_id);
CREATE INDEX IF NOT EXISTS evidence_links_to_evidence_id_idx ON evidence_links(to_evidence_id);

CREATE TABLE IF NOT EXISTS annotations (
    id          INTEGER PRIMARY KEY,
    evidence_id INTEGER NOT NULL REFERENCES evidence(id),
    author_id   INTEGER REFERENCES users(id),
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_evidence_id_idx ON annotations(evidence_id);
CREATE INDEX IF NOT EXISTS annotations_author_id_idx ON annotations(author_id);

CREATE TABLE IF NOT EXISTS notes (
    id             INTEGER PRIMARY KEY,
    case_id        TEXT NOT NULL REFERENCES cases(id),
    author_id      INTEGER REFERENCES users(id),
    parent_note_id INTEGER REFERENCES notes(id),  -- threaded reply, same case
    body           TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_case_id_idx ON notes(case_id);
CREATE INDEX IF NOT EXISTS notes_author_id_idx ON notes(author_id);
CREATE INDEX IF NOT EXISTS notes_parent_note_id_idx ON notes(parent_note_id);

-- The source system's own chain-of-custody log (not the exporter's).
CREATE TABLE IF NOT EXISTS custody_events (
    id          INTEGER PRIMARY KEY,
    evidence_id INTEGER NOT NULL REFERENCES evidence(id),
    actor_id    INTEGER REFERENCES users(id),
    action      TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    location    TEXT,
    details     TEXT
);
CREATE INDEX IF NOT EXISTS custody_events_evidence_id_idx ON custody_events(evidence_id);
CREATE INDEX IF NOT EXISTS custody_events_actor_id_idx ON custody_events(actor_id);
