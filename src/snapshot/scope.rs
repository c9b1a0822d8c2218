//! Which rows belong to a case: the root row plus every row that reaches it
//! through declared foreign keys, followed transitively (docs/SNAPSHOT.md).

use super::{SnapshotError, ident};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a case starts and what never leaves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// The table whose one row is the case.
    pub root_table: String,
    /// The key column of the root table that a case id names.
    pub root_key: String,
    /// Tables never exported, whatever points at them.
    pub exclude_tables: Vec<String>,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        Self {
            root_table: "cases".into(),
            root_key: "id".into(),
            exclude_tables: vec!["users".into()],
        }
    }
}

/// One declared foreign key of a child table.
#[derive(Debug, Clone)]
pub(crate) struct ForeignKey {
    pub parent: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

/// A table of the scope graph and how to copy it.
#[derive(Debug, Clone)]
pub(crate) struct ScopeTable {
    pub name: String,
    pub columns: Vec<String>,
    /// Key used to skip rows already copied: `rowid`, or the primary key of
    /// a WITHOUT ROWID table (from PostgreSQL: the primary key, if any).
    pub identity: Vec<String>,
    /// Foreign keys to tables of the graph (the rest are left as values).
    pub fks: Vec<ForeignKey>,
    /// Columns that can never be NULL (NOT NULL, or the rowid alias).
    pub not_null: BTreeSet<String>,
    /// The INTEGER PRIMARY KEY column aliasing the rowid (SQLite only): a
    /// key whose values no two rows share under any comparison.
    pub rowid_alias: Option<String>,
}

impl ScopeTable {
    /// The foreign keys whose edges can bring rows in. A row needs every
    /// non-NULL in-graph key to point at a copied row, so when one key can
    /// never be NULL, every row comes through that key's edge alone.
    pub(crate) fn driving_fks(&self) -> Vec<usize> {
        let mandatory = self
            .fks
            .iter()
            .position(|fk| fk.from.iter().all(|c| self.not_null.contains(c)));
        match mandatory {
            Some(i) => vec![i],
            None => (0..self.fks.len()).collect(),
        }
    }
}

fn not_null_columns(conn: &Connection, table: &str) -> rusqlite::Result<BTreeSet<String>> {
    let mut st =
        conn.prepare("SELECT name FROM src.pragma_table_info(?1) WHERE \"notnull\" = 1")?;
    let rows = st.query_map([table], |r| r.get(0))?;
    rows.collect()
}

/// The tables a case can reach, in breadth-first order from the root.
#[derive(Debug)]
pub(crate) struct ScopeGraph {
    pub tables: Vec<ScopeTable>,
}

fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut st = conn.prepare("SELECT name, pk FROM src.pragma_table_info(?1) ORDER BY cid")?;
    let rows = st.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The INTEGER PRIMARY KEY column that aliases the rowid, if any.
fn rowid_alias(conn: &Connection, table: &str) -> rusqlite::Result<Option<String>> {
    let mut st =
        conn.prepare("SELECT name, upper(type) FROM src.pragma_table_info(?1) WHERE pk > 0")?;
    let pk: Vec<(String, String)> = st
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(match pk.as_slice() {
        [(name, ty)] if ty == "INTEGER" => Some(name.clone()),
        _ => None,
    })
}

fn has_rowid(conn: &Connection, table: &str) -> bool {
    conn.prepare(&format!("SELECT rowid FROM src.{} LIMIT 0", ident(table)))
        .is_ok()
}

fn primary_key(cols: &[(String, i64)]) -> Vec<String> {
    let mut pk: Vec<_> = cols.iter().filter(|(_, p)| *p > 0).collect();
    pk.sort_by_key(|(_, p)| *p);
    pk.into_iter().map(|(n, _)| n.clone()).collect()
}

fn foreign_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ForeignKey>> {
    let mut st = conn.prepare(
        "SELECT id, \"table\", \"from\", \"to\" FROM src.pragma_foreign_key_list(?1) ORDER BY id, seq",
    )?;
    let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    let rows = st.query_map([table], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (id, parent, from, to) = row?;
        let fk = by_id.entry(id).or_insert_with(|| ForeignKey {
            parent,
            from: vec![],
            to: vec![],
        });
        fk.from.push(from);
        fk.to.extend(to);
    }
    Ok(by_id.into_values().collect())
}

/// Columns (name, primary-key position) and foreign keys of one table.
type TableInfo = (Vec<(String, i64)>, Vec<ForeignKey>);

/// Lists the user tables of the source schema.
pub(crate) fn source_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT name FROM src.sqlite_schema WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
}

impl ScopeGraph {
    /// Discovers the graph from the attached source's declared foreign keys.
    // Long: the scope rules of docs/SNAPSHOT.md applied in their documented order.
    pub fn discover(conn: &Connection, cfg: &ScopeConfig) -> Result<Self, SnapshotError> {
        let internal = SnapshotError::Internal;
        let names = source_tables(conn).map_err(internal)?;
        let find = |n: &str| names.iter().find(|t| t.eq_ignore_ascii_case(n)).cloned();
        let excluded: BTreeSet<String> =
            cfg.exclude_tables.iter().filter_map(|t| find(t)).collect();
        let root = find(&cfg.root_table).ok_or_else(|| {
            SnapshotError::Schema(format!("root table {:?} does not exist", cfg.root_table))
        })?;
        if excluded.contains(&root) {
            return Err(SnapshotError::Schema("the root table is excluded".into()));
        }
        let root_cols = table_columns(conn, &root).map_err(internal)?;
        if !root_cols
            .iter()
            .any(|(c, _)| c.eq_ignore_ascii_case(&cfg.root_key))
        {
            return Err(SnapshotError::Schema(format!(
                "root key column {:?} does not exist",
                cfg.root_key
            )));
        }

        // Every candidate table's foreign keys, with implicit targets resolved.
        let mut all: BTreeMap<String, TableInfo> = BTreeMap::new();
        for t in names.iter().filter(|t| !excluded.contains(*t)) {
            let cols = table_columns(conn, t).map_err(internal)?;
            let mut fks = foreign_keys(conn, t).map_err(internal)?;
            for fk in &mut fks {
                if let Some(p) = find(&fk.parent) {
                    fk.parent = p;
                }
            }
            all.insert(t.clone(), (cols, fks));
        }
        for (_, fks) in all.values_mut() {
            fks.retain(|fk| !excluded.contains(&fk.parent));
        }
        let pks: BTreeMap<String, Vec<String>> = all
            .iter()
            .map(|(t, (cols, _))| (t.clone(), primary_key(cols)))
            .collect();
        for (_, fks) in all.values_mut() {
            for fk in fks.iter_mut() {
                if fk.to.is_empty() {
                    fk.to = pks.get(&fk.parent).cloned().unwrap_or_default();
                }
            }
            // A key whose target we cannot name cannot be followed.
            fks.retain(|fk| fk.to.len() == fk.from.len());
        }

        // Breadth-first from the root over "child references parent" edges.
        let mut order = vec![root.clone()];
        let mut seen: BTreeSet<String> = BTreeSet::from([root.clone()]);
        let mut queue = VecDeque::from([root]);
        while let Some(parent) = queue.pop_front() {
            for (t, (_, fks)) in &all {
                if !seen.contains(t) && fks.iter().any(|fk| fk.parent == parent) {
                    seen.insert(t.clone());
                    order.push(t.clone());
                    queue.push_back(t.clone());
                }
            }
        }

        let tables = order
            .into_iter()
            .map(|name| -> Result<ScopeTable, SnapshotError> {
                let (cols, fks) = all.remove(&name).unwrap_or_default();
                let alias = match has_rowid(conn, &name) {
                    true => rowid_alias(conn, &name).map_err(internal)?,
                    false => None,
                };
                let identity = if !has_rowid(conn, &name) {
                    primary_key(&cols)
                } else if let Some(alias) = &alias {
                    vec![alias.clone()]
                } else {
                    vec!["rowid".to_string()]
                };
                let mut not_null = not_null_columns(conn, &name).map_err(internal)?;
                if identity.len() == 1 && identity[0] != "rowid" {
                    not_null.insert(identity[0].clone());
                }
                Ok(ScopeTable {
                    not_null,
                    rowid_alias: alias,
                    fks: fks
                        .into_iter()
                        .filter(|fk| seen.contains(&fk.parent))
                        .collect(),
                    columns: cols.into_iter().map(|(c, _)| c).collect(),
                    identity,
                    name,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tables })
    }

    pub fn root(&self) -> &ScopeTable {
        &self.tables[0]
    }

    /// The condition (on the source root table aliased `s`) that selects the
    /// case whose key is `?1`, spelled exactly as stored. A NOCASE key or one
    /// of INTEGER affinity would otherwise match several spellings (`CaSe` for
    /// `case`, `007` or `7.0` for 7), and the trail, the manifest and the file
    /// name would each record the spelling asked for, not the case's.
    pub fn root_match(key_col: &str) -> String {
        let k = ident(key_col);
        format!("s.{k} = ?1 AND CAST(s.{k} AS TEXT) = ?1 COLLATE BINARY")
    }

    /// Copies the root row; `Ok(false)` when there is none.
    pub fn copy_root(&self, conn: &Connection, key_col: &str, key: &str) -> rusqlite::Result<bool> {
        let t = self.root();
        let (cols, sel) = copy_lists(t);
        let sql = format!(
            "INSERT INTO main.{tn} ({cols}) SELECT {sel} FROM src.{tn} AS s WHERE {m}",
            tn = ident(&t.name),
            m = Self::root_match(key_col),
        );
        let n = conn.execute(&sql, [key])?;
        if n > 1 {
            // Not unique: the configured key does not identify one case.
            return Err(rusqlite::Error::QueryReturnedMoreThanOneRow);
        }
        Ok(n == 1)
    }

    /// Runs the fixed point: copies every row all of whose in-graph foreign
    /// keys point at copied rows (and at least one does), until nothing
    /// changes. Re-runs only the edges whose parents gained rows.
    ///
    ///
    /// An edge into a table that has no rows yet cannot meet a row twice
    /// when each row matches at most one parent row: the parent holds one
    /// row (the root), or the key names the parent's rowid alias. Such an
    /// edge runs without the probe for rows already copied. That probe
    /// reads the table being written, which makes SQLite collect the whole
    /// result in a temporary table before inserting it; without it, rows go
    /// straight in, in the order of the source's foreign-key index (for an
    /// edge from the root: in key order, so every insert appends).
    pub fn copy_closure(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut schedule = ClosureSchedule::new(self);
        let sqls: Vec<[String; 2]> = schedule
            .edges
            .iter()
            .map(|&(ti, fi)| [self.edge_sql(ti, fi, true), self.edge_sql(ti, fi, false)])
            .collect();
        let mut rows: Vec<usize> = (0..self.tables.len())
            .map(|ti| usize::from(ti == 0))
            .collect();
        while let Some((ei, ti, fi)) = schedule.next_edge() {
            let fk = &self.tables[ti].fks[fi];
            let parent = self.tables.iter().position(|p| p.name == fk.parent);
            let one_match = parent.is_some_and(|pi| {
                rows[pi] == 1
                    || self.tables[pi]
                        .rowid_alias
                        .as_ref()
                        .is_some_and(|a| fk.to.len() == 1 && fk.to[0].eq_ignore_ascii_case(a))
            });
            let sql = &sqls[ei][usize::from(rows[ti] == 0 && one_match)];
            let n = conn.execute(sql, [])?;
            if n > 0 {
                rows[ti] += n;
                schedule.gained_rows(ti);
            }
        }
        Ok(())
    }

    fn edge_sql(&self, ti: usize, fi: usize, probe_copied: bool) -> String {
        let t = &self.tables[ti];
        let fk = &t.fks[fi];
        let (cols, sel) = copy_lists(t);
        let on: Vec<String> = fk
            .from
            .iter()
            .zip(&fk.to)
            // Parent first: SQLite matches a foreign key with the parent
            // key's collation, and `=` takes the left operand's.
            .map(|(f, p)| format!("p.{} = s.{}", ident(p), ident(f)))
            .collect();
        let mut conds = Vec::new();
        for (oi, other) in t.fks.iter().enumerate() {
            if oi == fi {
                continue;
            }
            let nulls: Vec<String> = other
                .from
                .iter()
                .map(|f| format!("s.{} IS NULL", ident(f)))
                .collect();
            let matches: Vec<String> = other
                .from
                .iter()
                .zip(&other.to)
                .map(|(f, p)| format!("q.{} = s.{}", ident(p), ident(f)))
                .collect();
            conds.push(format!(
                "({} OR EXISTS (SELECT 1 FROM main.{} AS q WHERE {}))",
                nulls.join(" OR "),
                ident(&other.parent),
                matches.join(" AND ")
            ));
        }
        if probe_copied {
            let ids: Vec<String> = t
                .identity
                .iter()
                .map(|c| format!("m.{c} = s.{c}", c = ident(c)))
                .collect();
            conds.push(format!(
                "NOT EXISTS (SELECT 1 FROM main.{} AS m WHERE {})",
                ident(&t.name),
                ids.join(" AND ")
            ));
        }
        if conds.is_empty() {
            conds.push("1".into());
        }
        // CROSS JOIN keeps the (small) copied parents as the outer loop, so
        // the source is probed through its index on the foreign key.
        format!(
            "INSERT INTO main.{tn} ({cols}) SELECT {sel} FROM main.{pn} AS p \
             CROSS JOIN src.{tn} AS s ON {on} WHERE {conds}",
            tn = ident(&t.name),
            pn = ident(&fk.parent),
            on = on.join(" AND "),
            conds = conds.join(" AND "),
        )
    }
}

/// The order in which the fixed point runs its edges, for both sources'
/// builders: every driving edge in breadth-first order, pass after pass;
/// an edge runs again only when one of its table's parents gained rows
/// since it last ran; done after a pass that ran nothing.
pub(crate) struct ClosureSchedule {
    /// (table index, fk index) of every driving edge.
    pub edges: Vec<(usize, usize)>,
    /// The parent tables of each edge's table.
    deps: Vec<Vec<usize>>,
    /// Tick of the last change to each table; the root changed at 0.
    changed: Vec<Option<u64>>,
    /// Tick at which each edge last ran.
    evaluated: Vec<Option<u64>>,
    tick: u64,
    next: usize,
    ran_this_pass: bool,
}

impl ClosureSchedule {
    pub fn new(graph: &ScopeGraph) -> Self {
        let pos = |name: &str| graph.tables.iter().position(|t| t.name == name);
        let edges: Vec<(usize, usize)> = parents_first(graph)
            .into_iter()
            .flat_map(|ti| {
                let t = &graph.tables[ti];
                t.driving_fks().into_iter().map(move |fi| (ti, fi))
            })
            .collect();
        let deps = edges
            .iter()
            .map(|&(ti, _)| {
                graph.tables[ti]
                    .fks
                    .iter()
                    .filter_map(|fk| pos(&fk.parent))
                    .collect()
            })
            .collect();
        let mut changed = vec![None; graph.tables.len()];
        changed[0] = Some(0);
        Self {
            evaluated: vec![None; edges.len()],
            edges,
            deps,
            changed,
            tick: 0,
            next: 0,
            ran_this_pass: false,
        }
    }

    /// The next edge to run, as (edge, table, fk) indexes; `None` once a
    /// whole pass found nothing to run.
    pub fn next_edge(&mut self) -> Option<(usize, usize, usize)> {
        loop {
            if self.next == self.edges.len() {
                if !self.ran_this_pass {
                    return None;
                }
                self.next = 0;
                self.ran_this_pass = false;
            }
            let ei = self.next;
            self.next += 1;
            let evaluated = self.evaluated[ei];
            let dirty = self.deps[ei]
                .iter()
                .filter_map(|&d| self.changed[d])
                .any(|c| evaluated.is_none_or(|e| c >= e));
            if dirty {
                self.tick += 1;
                self.evaluated[ei] = Some(self.tick);
                self.ran_this_pass = true;
                let (ti, fi) = self.edges[ei];
                return Some((ei, ti, fi));
            }
        }
    }

    /// The edge just returned by `next_edge` copied rows into table `ti`.
    pub fn gained_rows(&mut self, ti: usize) {
        self.changed[ti] = Some(self.tick);
    }
}

/// The tables with every table after the tables its foreign keys name, so
/// that one pass of the fixed point finds each table's parents complete and
/// a second pass has nothing to do (but for tables that name themselves);
/// breadth-first order when the keys form a cycle through several tables
/// (the fixed point then takes as many passes as it needs).
fn parents_first(graph: &ScopeGraph) -> Vec<usize> {
    let n = graph.tables.len();
    let pos = |name: &str| graph.tables.iter().position(|t| t.name == name);
    let parents: Vec<BTreeSet<usize>> = graph
        .tables
        .iter()
        .enumerate()
        // A table's keys to itself (threads, trees) are the fixed point's
        // business, not the order's.
        .map(|(ti, t)| {
            t.fks
                .iter()
                .filter_map(|fk| pos(&fk.parent))
                .filter(|&p| p != ti)
                .collect()
        })
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while order.len() < n {
        // The first table, in breadth-first order, whose parents are placed.
        let Some(next) = (0..n).find(|&t| !placed[t] && parents[t].iter().all(|&p| placed[p]))
        else {
            return (0..n).collect();
        };
        placed[next] = true;
        order.push(next);
    }
    order
}

/// Column lists for INSERT and SELECT; rowid tables keep their rowids so
/// copied rows can be recognised.
fn copy_lists(t: &ScopeTable) -> (String, String) {
    let mut cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    if t.identity == ["rowid"] {
        cols.insert(0, "rowid".into());
    }
    let sel: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    (cols.join(", "), sel.join(", "))
}
