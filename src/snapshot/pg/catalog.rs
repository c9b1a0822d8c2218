//! The scope graph of a PostgreSQL schema, read from `pg_catalog`: tables,
//! columns and their snapshot types, keys, and the schema fingerprint.

use super::super::scope::{ForeignKey, ScopeConfig, ScopeGraph, ScopeTable};
use super::super::{SnapshotError, ident};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tokio_postgres::GenericClient;

/// How a column's value is read from PostgreSQL and kept in the snapshot
/// (the table in docs/SNAPSHOT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Integers and `oid`: read as int8, kept as INTEGER.
    Int,
    /// `real`, `double precision`: read as float8, kept as REAL (NaN as text).
    Float,
    /// `boolean`: kept as INTEGER 0/1.
    Bool,
    /// `bytea`: kept as BLOB.
    Bytes,
    /// `timestamp`: ISO 8601 text with a `T`.
    Timestamp,
    /// `timestamptz`: ISO 8601 text in UTC with a `T` and a `Z`.
    Timestamptz,
    /// Arrays: JSON text.
    Array,
    /// `inet`, `cidr`: their output form.
    Inet,
    /// Character types: their text; tenant values must be of this kind.
    Text,
    /// Everything else (`numeric`, `uuid`, dates, times, intervals, json,
    /// enums, ...): the type's text form.
    Other,
}

impl Kind {
    fn of(typname: &str, typnspname: &str, typtype: &str, typcategory: &str) -> Self {
        if typcategory == "A" {
            return Self::Array;
        }
        if typtype == "e" {
            return Self::Other;
        }
        if typname == "citext" {
            return Self::Text;
        }
        if typnspname != "pg_catalog" {
            return Self::Other;
        }
        match typname {
            "int2" | "int4" | "int8" | "oid" => Self::Int,
            "float4" | "float8" => Self::Float,
            "bool" => Self::Bool,
            "bytea" => Self::Bytes,
            "timestamp" => Self::Timestamp,
            "timestamptz" => Self::Timestamptz,
            "inet" | "cidr" => Self::Inet,
            "text" | "varchar" | "bpchar" | "name" | "char" => Self::Text,
            _ => Self::Other,
        }
    }

    /// The SQLite column type whose affinity keeps the mapped value as is.
    pub(super) fn sqlite_type(self) -> &'static str {
        match self {
            Self::Int | Self::Bool => "INTEGER",
            Self::Float => "REAL",
            Self::Bytes => "BLOB",
            _ => "TEXT",
        }
    }

    /// The select expression for column `q` (already `s."name"`): one of
    /// int8, float8, bool, bytea or text, so decoding is trivial.
    pub(super) fn select(self, q: &str) -> String {
        match self {
            Self::Int => format!("{q}::int8"),
            Self::Float => format!("{q}::float8"),
            Self::Bool => format!("{q}::bool"),
            Self::Bytes => format!("{q}::bytea"),
            // The first space separates date and time (a BC suffix comes last).
            Self::Timestamp => format!("regexp_replace({q}::text, ' ', 'T')"),
            Self::Timestamptz => format!(
                "CASE WHEN isfinite({q}) THEN regexp_replace(({q} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z' ELSE {q}::text END"
            ),
            Self::Array => format!("to_json({q})::text"),
            // The output function, not the text cast: inet '1.2.3.4' is not
            // '1.2.3.4/32'.
            Self::Inet => format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END"),
            Self::Text | Self::Other => format!("{q}::text"),
        }
    }
}

/// One column of a scope table.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub name: String,
    pub kind: Kind,
    /// The declared type without modifiers, as PostgreSQL names (and
    /// quotes) it: text values of the column are cast back through it.
    pub cast: String,
    pub not_null: bool,
}

/// A table of the scope with what PostgreSQL says about it.
#[derive(Debug, Clone)]
pub(super) struct PgTable {
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub uniques: Vec<Vec<String>>,
}

impl PgTable {
    pub(super) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The scope: the generic graph (for the fixed point) and the tables'
/// PostgreSQL details, in the same order.
#[derive(Debug)]
pub(super) struct PgScope {
    pub graph: ScopeGraph,
    pub tables: Vec<PgTable>,
    pub fingerprint: String,
}

struct Constraint {
    table: String,
    contype: String,
    columns: Vec<String>,
    parent: Option<String>,
    parent_columns: Vec<String>,
    def: String,
    name: String,
}

const TABLES_SQL: &str = "SELECT c.relname::text FROM pg_catalog.pg_class c \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
    ORDER BY c.relname";

// Domains resolve to their base type (recursively); the declared type is
// kept for casts and the fingerprint.
const COLUMNS_SQL: &str = "WITH RECURSIVE cols AS ( \
      SELECT c.relname::text AS tbl, a.attname::text AS col, a.attnum, a.attnotnull, \
             a.atttypid AS typid, a.atttypid AS declared, a.atttypmod \
      FROM pg_catalog.pg_attribute a \
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
        AND a.attnum > 0 AND NOT a.attisdropped \
    UNION ALL \
      SELECT cols.tbl, cols.col, cols.attnum, cols.attnotnull, t.typbasetype, cols.declared, cols.atttypmod \
      FROM cols JOIN pg_catalog.pg_type t ON t.oid = cols.typid WHERE t.typtype = 'd' \
    ) \
    SELECT cols.tbl, cols.col, cols.attnotnull, t.typname::text, tn.nspname::text, \
           t.typtype::text, t.typcategory::text, \
           pg_catalog.format_type(cols.declared, NULL), \
           pg_catalog.format_type(cols.declared, cols.atttypmod) \
    FROM cols JOIN pg_catalog.pg_type t ON t.oid = cols.typid \
    JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
    WHERE t.typtype <> 'd' \
    ORDER BY cols.tbl, cols.attnum";

// Constraints declared on the table itself (conparentid = 0 leaves out the
// copies PostgreSQL makes for partitions); key columns in key order.
const CONSTRAINTS_SQL: &str = "SELECT c.relname::text, con.contype::text, con.conname::text, \
      ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, i) \
            JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n \
            ORDER BY k.i), \
      CASE WHEN pn.nspname = $1 THEN pr.relname::text END, \
      ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(n, i) \
            JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n \
            ORDER BY k.i), \
      pg_catalog.pg_get_constraintdef(con.oid) \
    FROM pg_catalog.pg_constraint con \
    JOIN pg_catalog.pg_class c ON c.oid = con.conrelid \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    LEFT JOIN pg_catalog.pg_class pr ON pr.oid = con.confrelid \
    LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pr.relnamespace \
    WHERE n.nspname = $1 AND con.contype IN ('p', 'u', 'f') AND con.conparentid = 0 \
      AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
    ORDER BY c.relname, con.conname";

/// Column and declared type with modifiers, for the fingerprint.
type Declared = Vec<(String, String, bool)>;

/// Reads the scope of `cfg` from `schema`, inside the export's transaction.
// Long: the scope rules of docs/SNAPSHOT.md applied in their documented order.
pub(super) async fn discover(
    client: &impl GenericClient,
    schema: &str,
    cfg: &ScopeConfig,
) -> Result<PgScope, tokio_postgres::Error> {
    let names: Vec<String> = client
        .query(TABLES_SQL, &[&schema])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut columns: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    let mut declared: BTreeMap<String, Declared> = BTreeMap::new();
    for r in client.query(COLUMNS_SQL, &[&schema]).await? {
        let table: String = r.get(0);
        let name: String = r.get(1);
        let not_null: bool = r.get(2);
        let kind = Kind::of(r.get(3), r.get(4), r.get(5), r.get(6));
        declared
            .entry(table.clone())
            .or_default()
            .push((name.clone(), r.get(8), not_null));
        columns.entry(table).or_default().push(Column {
            name,
            kind,
            cast: r.get(7),
            not_null,
        });
    }
    let constraints: Vec<Constraint> = client
        .query(CONSTRAINTS_SQL, &[&schema])
        .await?
        .iter()
        .map(|r| Constraint {
            table: r.get(0),
            contype: r.get(1),
            name: r.get(2),
            columns: r.get(3),
            parent: r.get(4),
            parent_columns: r.get(5),
            def: r.get(6),
        })
        .collect();
    Ok(PgScope {
        graph: ScopeGraph { tables: vec![] },
        tables: vec![],
        fingerprint: String::new(),
    }
    .fill(names, columns, declared, constraints, cfg))
}

/// The root key column as the catalog spells it (matched
/// case-insensitively, like SQLite names), or the error of a scope that
/// does not fit the schema.
pub(super) fn root_key<'s>(
    scope: &'s PgScope,
    schema: &str,
    cfg: &ScopeConfig,
) -> Result<&'s Column, SnapshotError> {
    let root = scope.tables.first().ok_or_else(|| {
        SnapshotError::Schema(format!(
            "root table {:?} does not exist in schema {schema:?}, or is excluded",
            cfg.root_table
        ))
    })?;
    root.columns
        .iter()
        .find(|c| c.name == cfg.root_key)
        .or_else(|| {
            root.columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&cfg.root_key))
        })
        .ok_or_else(|| {
            SnapshotError::Schema(format!("root key column {:?} does not exist", cfg.root_key))
        })
}

impl PgScope {
    // Long: the same steps as `ScopeGraph::discover`, on catalog rows.
    fn fill(
        mut self,
        names: Vec<String>,
        mut columns: BTreeMap<String, Vec<Column>>,
        declared: BTreeMap<String, Declared>,
        constraints: Vec<Constraint>,
        cfg: &ScopeConfig,
    ) -> Self {
        let find = |n: &str| names.iter().find(|t| t.eq_ignore_ascii_case(n)).cloned();
        let excluded: BTreeSet<String> =
            cfg.exclude_tables.iter().filter_map(|t| find(t)).collect();
        let Some(root) = find(&cfg.root_table).filter(|r| !excluded.contains(r)) else {
            return self;
        };
        let mut fks: BTreeMap<String, Vec<ForeignKey>> = BTreeMap::new();
        let mut pks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut uniques: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for c in &constraints {
            match c.contype.as_str() {
                "p" => {
                    pks.insert(c.table.clone(), c.columns.clone());
                }
                "u" => uniques
                    .entry(c.table.clone())
                    .or_default()
                    .push(c.columns.clone()),
                _ => {
                    // Keys to other schemas or excluded tables stay values.
                    if let Some(p) = &c.parent
                        && !excluded.contains(p)
                        && c.columns.len() == c.parent_columns.len()
                    {
                        fks.entry(c.table.clone()).or_default().push(ForeignKey {
                            parent: p.clone(),
                            from: c.columns.clone(),
                            to: c.parent_columns.clone(),
                        });
                    }
                }
            }
        }

        // Breadth-first from the root over "child references parent" edges.
        let candidates: Vec<&String> = names.iter().filter(|t| !excluded.contains(*t)).collect();
        let mut order = vec![root.clone()];
        let mut seen: BTreeSet<String> = BTreeSet::from([root.clone()]);
        let mut queue = VecDeque::from([root]);
        while let Some(parent) = queue.pop_front() {
            for t in &candidates {
                let refs = fks
                    .get(*t)
                    .is_some_and(|f| f.iter().any(|fk| fk.parent == parent));
                if !seen.contains(*t) && refs {
                    seen.insert((*t).clone());
                    order.push((*t).clone());
                    queue.push_back((*t).clone());
                }
            }
        }

        let mut h = Sha256::new();
        let mut by_name: Vec<&String> = order.iter().collect();
        by_name.sort();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        for t in by_name {
            put("table");
            put(t);
            for (c, ty, nn) in declared.get(t).into_iter().flatten() {
                put(c);
                put(ty);
                put(if *nn { "not null" } else { "null" });
            }
            for c in constraints.iter().filter(|c| &c.table == t) {
                put(&c.name);
                put(&c.def);
            }
        }
        self.fingerprint = hex::encode(h.finalize());

        for name in order {
            let cols = columns.remove(&name).unwrap_or_default();
            let pk = pks.remove(&name).unwrap_or_default();
            let in_graph: Vec<ForeignKey> = fks
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|fk| seen.contains(&fk.parent))
                .collect();
            self.graph.tables.push(ScopeTable {
                rowid_alias: None,
                name: name.clone(),
                columns: cols.iter().map(|c| c.name.clone()).collect(),
                identity: pk.clone(),
                fks: in_graph,
                not_null: cols
                    .iter()
                    .filter(|c| c.not_null)
                    .map(|c| c.name.clone())
                    .collect(),
            });
            self.tables.push(PgTable {
                uniques: uniques.remove(&name).unwrap_or_default(),
                name,
                columns: cols,
                primary_key: pk,
            });
        }
        self
    }

    /// `CREATE TABLE` statements of the snapshot, and the indexes on
    /// foreign-key columns to build after the copy.
    pub(super) fn snapshot_ddl(&self) -> (Vec<String>, Vec<String>) {
        let mut tables = Vec::new();
        let mut indexes = Vec::new();
        for (t, g) in self.tables.iter().zip(&self.graph.tables) {
            let single_int_pk = match t.primary_key.as_slice() {
                [k] => t.column(k).is_some_and(|c| c.kind == Kind::Int),
                _ => false,
            };
            let mut defs: Vec<String> = t
                .columns
                .iter()
                .map(|c| {
                    let mut d = format!("{} {}", ident(&c.name), c.kind.sqlite_type());
                    if single_int_pk && t.primary_key[0] == c.name {
                        d.push_str(" PRIMARY KEY");
                    }
                    if c.not_null {
                        d.push_str(" NOT NULL");
                    }
                    d
                })
                .collect();
            let list =
                |cols: &[String]| cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            if !t.primary_key.is_empty() && !single_int_pk {
                defs.push(format!("PRIMARY KEY ({})", list(&t.primary_key)));
            }
            for u in &t.uniques {
                defs.push(format!("UNIQUE ({})", list(u)));
            }
            let mut indexed: BTreeSet<Vec<String>> = BTreeSet::new();
            for fk in &g.fks {
                defs.push(format!(
                    "FOREIGN KEY ({}) REFERENCES {} ({})",
                    list(&fk.from),
                    ident(&fk.parent),
                    list(&fk.to)
                ));
                // The primary key is indexed already.
                if fk.from != t.primary_key && indexed.insert(fk.from.clone()) {
                    let idx = format!("{}_{}_fk_idx", t.name, fk.from.join("_"));
                    indexes.push(format!(
                        "CREATE INDEX {} ON {} ({})",
                        ident(&idx),
                        ident(&t.name),
                        list(&fk.from)
                    ));
                }
            }
            tables.push(format!(
                "CREATE TABLE {} (\n  {}\n)",
                ident(&t.name),
                defs.join(",\n  ")
            ));
        }
        (tables, indexes)
    }
}
