-- The demo case schema of schema/cases.sql in PostgreSQL: the same tables,
-- columns, constraints and indexes, with real types. `cases` is the export
-- root; `users` is system data that must never leave in an export.
--
-- The types are chosen so that the PostgreSQL case source's mapping into
-- the SQLite snapshot gives back exactly what the SQLite demo stores:
-- timestamptz comes back as 2025-03-14T09:26:53Z (UTC), date as
-- 2025-03-14, uuid as lowercase hyphenated text, double precision as the
-- same REAL, and json as its text exactly as stored (jsonb would reorder
-- keys and respace it). Money is bigint minor units (cents) next to an
-- ISO-4217 currency code. Every foreign-key column has its own index
-- because the exporter walks the FK graph in both directions through them.
--
-- Idempotent (IF NOT EXISTS) so it can be applied to an existing database.

CREATE TABLE IF NOT EXISTS users (
    id                  bigint PRIMARY KEY,
    email               text NOT NULL UNIQUE,
    display_name        text NOT NULL,
    role                text NOT NULL
                        CHECK (role IN ('admin', 'supervisor', 'investigator', 'analyst', 'auditor')),
    password_hash       text NOT NULL,
    created_at          timestamptz NOT NULL,
    -- Points back at cases on purpose: following FKs from a case reaches
    -- users, so the exporter's exclude list must stop it. The constraint
    -- is added below, once cases exists.
    last_viewed_case_id uuid
);
CREATE INDEX IF NOT EXISTS users_last_viewed_case_id_idx ON users(last_viewed_case_id);

CREATE TABLE IF NOT EXISTS cases (
    id          uuid PRIMARY KEY,
    case_number text NOT NULL UNIQUE,
    title       text NOT NULL,
    description text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('open', 'triage', 'investigating', 'escalated', 'closed', 'archived')),
    priority    text NOT NULL
                CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    tenant      text NOT NULL,
    assigned_to bigint REFERENCES users(id),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_assigned_to_idx ON cases(assigned_to);
CREATE INDEX IF NOT EXISTS cases_tenant_idx ON cases(tenant);

-- The users <-> cases cycle. PostgreSQL has no ADD CONSTRAINT IF NOT
-- EXISTS, hence the catalog check. DEFERRABLE so that a bulk load can
-- write users before the cases they point at and have the reference
-- checked at commit.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'users_last_viewed_case_id_fkey'
          AND conrelid = 'users'::regclass
    ) THEN
        ALTER TABLE users
            ADD CONSTRAINT users_last_viewed_case_id_fkey
            FOREIGN KEY (last_viewed_case_id) REFERENCES cases(id)
            DEFERRABLE INITIALLY IMMEDIATE;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS subjects (
    id            bigint PRIMARY KEY,
    case_id       uuid NOT NULL REFERENCES cases(id),
    kind          text NOT NULL CHECK (kind IN ('person', 'company')),
    full_name     text NOT NULL,
    date_of_birth date,  -- persons only
    national_id   text,  -- passport / ID number, or register number for companies
    email         text,
    phone         text,
    address       text,
    nationality   text,  -- ISO-3166 alpha-2
    notes         text
);
CREATE INDEX IF NOT EXISTS subjects_case_id_idx ON subjects(case_id);

CREATE TABLE IF NOT EXISTS transactions (
    id                bigint PRIMARY KEY,
    case_id           uuid NOT NULL REFERENCES cases(id),
    subject_id        bigint REFERENCES subjects(id),
    amount            bigint NOT NULL CHECK (amount > 0),  -- cents
    currency          text NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP', 'CHF')),
    occurred_at       timestamptz NOT NULL,
    counterparty      text NOT NULL,
    counterparty_bank text,
    counterparty_iban text,
    direction         text NOT NULL CHECK (direction IN ('in', 'out')),
    reference         text
);
CREATE INDEX IF NOT EXISTS transactions_case_id_idx ON transactions(case_id);
CREATE INDEX IF NOT EXISTS transactions_subject_id_idx ON transactions(subject_id);

CREATE TABLE IF NOT EXISTS analysis_results (
    id             bigint PRIMARY KEY,
    case_id        uuid NOT NULL REFERENCES cases(id),
    analyst_id     bigint REFERENCES users(id),
    model          text NOT NULL,
    risk_score     double precision NOT NULL CHECK (risk_score BETWEEN 0.0 AND 1.0),
    decision       text NOT NULL,
    reviewer_notes text,
    created_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS analysis_results_case_id_idx ON analysis_results(case_id);
CREATE INDEX IF NOT EXISTS analysis_results_analyst_id_idx ON analysis_results(analyst_id);

CREATE TABLE IF NOT EXISTS indicators (
    id             bigint PRIMARY KEY,
    analysis_id    bigint NOT NULL REFERENCES analysis_results(id),
    transaction_id bigint REFERENCES transactions(id),
    indicator_type text NOT NULL,
    confidence     double precision NOT NULL CHECK (confidence BETWEEN 0.0 AND 1.0),
    detail         text
);
CREATE INDEX IF NOT EXISTS indicators_analysis_id_idx ON indicators(analysis_id);
CREATE INDEX IF NOT EXISTS indicators_transaction_id_idx ON indicators(transaction_id);

CREATE TABLE IF NOT EXISTS evidence (
    id           bigint PRIMARY KEY,
    case_id      uuid NOT NULL REFERENCES cases(id),
    kind         text NOT NULL CHECK (kind IN ('document', 'photo', 'email')),
    title        text NOT NULL,
    sha256       text NOT NULL,  -- lowercase hex
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    collected_at timestamptz NOT NULL,
    collected_by bigint REFERENCES users(id)
);
CREATE INDEX IF NOT EXISTS evidence_case_id_idx ON evidence(case_id);
CREATE INDEX IF NOT EXISTS evidence_collected_by_idx ON evidence(collected_by);

-- 1:1 subtypes of evidence, selected by evidence.kind. The primary key is
-- the FK, so it needs no separate index.
CREATE TABLE IF NOT EXISTS evidence_documents (
    evidence_id    bigint PRIMARY KEY REFERENCES evidence(id),
    mime_type      text NOT NULL,
    page_count     bigint NOT NULL CHECK (page_count > 0),
    extracted_text text
);

CREATE TABLE IF NOT EXISTS evidence_photos (
    evidence_id  bigint PRIMARY KEY REFERENCES evidence(id),
    width        bigint NOT NULL,
    height       bigint NOT NULL,
    camera_make  text,
    camera_model text,
    taken_at     timestamptz,
    gps_lat      double precision,
    gps_lon      double precision,
    exif_json    json  -- raw EXIF as a JSON object, text kept as written
);

CREATE TABLE IF NOT EXISTS evidence_emails (
    evidence_id bigint PRIMARY KEY REFERENCES evidence(id),
    sender      text NOT NULL,
    recipients  text NOT NULL,  -- comma-separated addresses
    subject     text NOT NULL,
    sent_at     timestamptz NOT NULL,
    body        text NOT NULL
);

-- May connect evidence of two different cases.
CREATE TABLE IF NOT EXISTS evidence_links (
    id               bigint PRIMARY KEY,
    from_evidence_id bigint NOT NULL REFERENCES evidence(id),
    to_evidence_id   bigint NOT NULL REFERENCES evidence(id),
    relation         text NOT NULL,
    created_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_links_from_evidence_id_idx ON evidence_links(from_evidence_id);
CREATE INDEX IF NOT EXISTS evidence_links_to_evidence_id_idx ON evidence_links(to_evidence_id);

CREATE TABLE IF NOT EXISTS annotations (
    id          bigint PRIMARY KEY,
    evidence_id bigint NOT NULL REFERENCES evidence(id),
    author_id   bigint REFERENCES users(id),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_evidence_id_idx ON annotations(evidence_id);
CREATE INDEX IF NOT EXISTS annotations_author_id_idx ON annotations(author_id);

CREATE TABLE IF NOT EXISTS notes (
    id             bigint PRIMARY KEY,
    case_id        uuid NOT NULL REFERENCES cases(id),
    author_id      bigint REFERENCES users(id),
    parent_note_id bigint REFERENCES notes(id),  -- threaded reply, same case
    body           text NOT NULL,
    created_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_case_id_idx ON notes(case_id);
CREATE INDEX IF NOT EXISTS notes_author_id_idx ON notes(author_id);
CREATE INDEX IF NOT EXISTS notes_parent_note_id_idx ON notes(parent_note_id);

-- The source system's own chain-of-custody log (not the exporter's).
CREATE TABLE IF NOT EXISTS custody_events (
    id          bigint PRIMARY KEY,
    evidence_id bigint NOT NULL REFERENCES evidence(id),
    actor_id    bigint REFERENCES users(id),
    action      text NOT NULL,
    occurred_at timestamptz NOT NULL,
    location    text,
    details     text
);
CREATE INDEX IF NOT EXISTS custody_events_evidence_id_idx ON custody_events(evidence_id);
CREATE INDEX IF NOT EXISTS custody_events_actor_id_idx ON custody_events(actor_id);
