//! Builds one case's snapshot: the source attached read-only into a private
//! in-memory (memdb) database, copied in one read transaction.

use super::scope::ScopeGraph;
use super::{MANIFEST_TABLE, ScopeConfig, SnapshotError, ident};
use crate::seal::{ExportId, FORMAT_VERSION};
use rusqlite::{Connection, FileControl, OpenFlags, ffi};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroize;

/// Everything that decides one snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotRequest<'a> {
    /// Value of the root key column.
    pub case_id: &'a str,
    /// Root table, key column and exclusions.
    pub scope: &'a ScopeConfig,
    /// Recorded in the manifest.
    pub export_id: ExportId,
    /// RFC 3339 UTC, recorded in the manifest.
    pub created_at: &'a str,
    /// Ceiling on the snapshot's size in bytes.
    pub max_bytes: u64,
    /// How long to wait for a writer's lock on the source.
    pub busy_timeout: Duration,
    /// Column of the root table naming a case's tenant, if the source has
    /// one; the tenant is then read and returned with the snapshot.
    pub tenant_column: Option<&'a str>,
    /// For callers limited to tenants: the tenants they may see. A case of
    /// another tenant is `NotFound`; the tenant column must then exist.
    pub allowed_tenants: Option<&'a [String]>,
}

/// A finished snapshot held in memory; its bytes are zeroed on drop.
pub struct Snapshot {
    conn: Connection,
    size: u64,
    /// Rows per exported table, sorted by table name.
    pub row_counts: Vec<(String, u64)>,
    /// SHA-256 (hex) of the source schema; see docs/SNAPSHOT.md.
    pub source_schema_sha256: String,
    /// The case's tenant, when the root table has the tenant column and the
    /// case's value there is not NULL.
    pub tenant: Option<String>,
    /// Every byte was zeroed by its last user (`consume_bytes`).
    wiped: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("size", &self.size)
            .field("row_counts", &self.row_counts)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The in-memory database being built (for the other sources' builders).
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Size of the serialized SQLite file in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True for a zero-byte snapshot (never produced by `build_snapshot`).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Lends the serialized database without copying it.
    pub fn with_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, SnapshotError> {
        let data = self
            .conn
            .serialize(rusqlite::MAIN_DB)
            .map_err(SnapshotError::Internal)?;
        Ok(f(&data))
    }

    /// Lends the serialized database for its last use, which may overwrite
    /// it (the sealer wipes what it has sealed), and returns what `f`
    /// returned. An `Ok` from `f` says it zeroed every byte, so dropping
    /// the snapshot skips doing it again; the snapshot is no use for
    /// anything but dropping afterwards.
    pub fn consume_bytes<T, E>(
        &mut self,
        f: impl FnOnce(&mut [u8]) -> Result<T, E>,
    ) -> Result<Result<T, E>, SnapshotError> {
        let Some(data) = self.memdb_buffer() else {
            return Err(SnapshotError::Unavailable("the snapshot is not in memory"));
        };
        let r = f(data);
        self.wiped = r.is_ok();
        Ok(r)
    }

    /// memdb's own buffer holding the database: no copy.
    fn memdb_buffer(&mut self) -> Option<&mut [u8]> {
        // SAFETY: NOCOPY returns memdb's own buffer of `sz` bytes, which stays
        // valid until the connection closes or writes to the database; the
        // `&mut self` borrow rules out both while the slice lives.
        unsafe {
            let mut sz: ffi::sqlite3_int64 = 0;
            let p = ffi::sqlite3_serialize(
                self.conn.handle(),
                c"main".as_ptr(),
                &raw mut sz,
                ffi::SQLITE_SERIALIZE_NOCOPY,
            );
            (!p.is_null() && sz > 0).then(|| std::slice::from_raw_parts_mut(p, sz as usize))
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.wiped
            && let Some(data) = self.memdb_buffer()
        {
            data.zeroize();
        }
    }
}

/// Gives the in-memory database its whole buffer, up to the snapshot's
/// ceiling, before anything is written. memdb otherwise grows by
/// reallocation, and every move leaves a copy of the pages written so far
/// in freed heap memory, where nothing wipes it. The buffer is virtual
/// memory: pages become resident only as the database fills them, and a
/// buffer this large is mapped by the allocator on its own, so it goes back
/// to the system (not to the heap) when the connection closes. Without it
/// (the allocation refused), memdb grows as before.
fn reserve_whole_buffer(conn: &Connection, max_bytes: u64) {
    let Ok(cap) = i64::try_from(max_bytes) else {
        return;
    };
    // SAFETY: the buffer comes from sqlite3_malloc64 as FREEONCLOSE
    // requires, and its ownership passes to SQLite, which frees it when the
    // connection closes or, should deserializing fail, at once. An empty
    // database (size 0) needs no content in it.
    unsafe {
        let buf = ffi::sqlite3_malloc64(max_bytes).cast::<u8>();
        if buf.is_null() {
            return;
        }
        let _ = ffi::sqlite3_deserialize(
            conn.handle(),
            c"main".as_ptr(),
            buf,
            0,
            cap,
            ffi::SQLITE_DESERIALIZE_RESIZEABLE | ffi::SQLITE_DESERIALIZE_FREEONCLOSE,
        );
    }
}

/// `file:` URI opening `path` read-only; bytes outside the unreserved set are
/// percent-encoded so no path can smuggle in URI parameters.
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    // The snapshot connection runs on memdb; the source needs the default
    // file VFS named explicitly or it would open as an empty memdb.
    if let Some(vfs) = default_vfs() {
        uri.push_str("&vfs=");
        uri.push_str(&vfs);
    }
    uri
}

fn default_vfs() -> Option<String> {
    // SAFETY: sqlite3_vfs_find(NULL) returns the registered default VFS,
    // which lives for the whole process; its name is a NUL-terminated string.
    unsafe {
        let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
        if vfs.is_null() || (*vfs).zName.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*vfs).zName)
            .to_str()
            .ok()
            .map(str::to_owned)
    }
}

fn schema_fingerprint(conn: &Connection) -> rusqlite::Result<String> {
    let mut st = conn.prepare(
        "SELECT type, name, coalesce(sql, '') FROM src.sqlite_schema \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name",
    )?;
    let mut h = Sha256::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        for i in 0..3 {
            let v: String = r.get(i)?;
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Takes the snapshot of one case from the SQLite database `source`
/// (opened read-only). Blocking: run it off the async workers.
pub fn build_snapshot(source: &Path, req: &SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
    check_source_file(source)?;
    let mut snap = Snapshot::in_memory(req.max_bytes, req.busy_timeout)?;
    attach_source(&snap.conn, source, req)?;
    let copied = copy_case(&snap.conn, req)?;
    snap.finish(req, copied)?;
    Ok(snap)
}

fn check_source_file(source: &Path) -> Result<(), SnapshotError> {
    match std::fs::metadata(source) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(SnapshotError::Unavailable("not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(SnapshotError::Unavailable("database file not found"))
        }
        Err(_) => Err(SnapshotError::Unavailable("cannot open the database file")),
    }
}

/// An SQLite error while writing the snapshot: a full memdb is the ceiling.
fn too_large(req: &SnapshotRequest<'_>) -> impl Fn(rusqlite::Error) -> SnapshotError {
    let (limit, busy) = (req.max_bytes, req.busy_timeout);
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => SnapshotError::TooLarge { limit },
        _ => SnapshotError::from_source(e, busy),
    }
}

/// Attaches the source read-only as `src`, with its page cache.
fn attach_source(
    conn: &Connection,
    source: &Path,
    req: &SnapshotRequest<'_>,
) -> Result<(), SnapshotError> {
    conn.execute("ATTACH DATABASE ?1 AS src", [read_only_uri(source)])
        .map_err(|e| SnapshotError::from_source(e, req.busy_timeout))?;
    // A larger cache for the source: the copy probes its foreign-key
    // indexes all over the file. (No memory map: an I/O error on a mapped
    // page would kill the whole server instead of failing one export.)
    conn.execute_batch(&format!(
        "PRAGMA src.cache_size = -{};",
        super::source_cache_bytes(req.max_bytes).div_ceil(1024)
    ))
    .map_err(SnapshotError::Internal)
}

/// What the read transaction leaves for the rest of the build.
pub(super) struct Copied {
    pub fingerprint: String,
    pub graph: ScopeGraph,
    pub index_sql: Vec<String>,
    pub tenant: Option<String>,
}

/// A read transaction on the attached source, rolled back unless committed.
struct ReadTxn<'c>(&'c Connection, bool);

impl<'c> ReadTxn<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, SnapshotError> {
        conn.execute_batch("BEGIN")
            .map_err(SnapshotError::Internal)?;
        Ok(Self(conn, false))
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.1 = true;
        self.0.execute_batch("COMMIT")
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

/// In one read transaction, so every row comes from the same committed
/// state: the scope graph, the tenant check, the tables and their rows.
fn copy_case(conn: &Connection, req: &SnapshotRequest<'_>) -> Result<Copied, SnapshotError> {
    let src_err = |e| SnapshotError::from_source(e, req.busy_timeout);
    let too_large = too_large(req);
    let txn = ReadTxn::begin(conn)?;
    let fingerprint = schema_fingerprint(conn).map_err(src_err)?;
    let graph = ScopeGraph::discover(conn, req.scope)?;
    let (tables_sql, index_sql) = schema_of(conn, &graph).map_err(src_err)?;
    let tenant = case_tenant(conn, &graph, req)?;
    if let Some(allowed) = req.allowed_tenants
        && !tenant.as_ref().is_some_and(|t| allowed.contains(t))
    {
        // Same answer as a missing case, so ids cannot be probed.
        return Err(SnapshotError::NotFound);
    }
    for sql in &tables_sql {
        conn.execute_batch(sql).map_err(&too_large)?;
    }
    if !graph
        .copy_root(conn, &req.scope.root_key, req.case_id)
        .map_err(&too_large)?
    {
        return Err(SnapshotError::NotFound);
    }
    graph.copy_closure(conn).map_err(&too_large)?;
    txn.commit().map_err(&too_large)?;
    conn.execute_batch("DETACH DATABASE src")
        .map_err(SnapshotError::Internal)?;
    Ok(Copied {
        fingerprint,
        graph,
        index_sql,
        tenant,
    })
}

/// The source's `CREATE TABLE` and `CREATE INDEX` text of the scope's
/// tables. Triggers and views are left out: they could reach beyond the
/// case.
fn schema_of(
    conn: &Connection,
    graph: &ScopeGraph,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let mut tables_sql = Vec::new();
    let mut index_sql = Vec::new();
    let mut st = conn.prepare(
        "SELECT type, sql FROM src.sqlite_schema WHERE tbl_name = ?1 AND sql IS NOT NULL",
    )?;
    for t in &graph.tables {
        let rows = st.query_map([&t.name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (ty, sql) = row?;
            match ty.as_str() {
                "table" => tables_sql.push(sql),
                "index" => index_sql.push(sql),
                _ => {}
            }
        }
    }
    Ok((tables_sql, index_sql))
}

impl Snapshot {
    /// A private in-memory (memdb) database capped at `max_bytes`.
    pub(super) fn in_memory(max_bytes: u64, busy: Duration) -> Result<Self, SnapshotError> {
        let internal = SnapshotError::Internal;
        // A memdb name without a leading '/' is private to this connection.
        let conn = Connection::open_with_flags(
            "file:case-snapshot?vfs=memdb",
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(internal)?;
        reserve_whole_buffer(&conn, max_bytes);
        // From here on, any early return drops the snapshot, which zeroes
        // whatever part of the case was already copied.
        let snap = Snapshot {
            conn,
            size: 0,
            row_counts: Vec::new(),
            source_schema_sha256: String::new(),
            tenant: None,
            wiped: false,
        };
        snap.conn
            .execute_batch(
                "PRAGMA temp_store = MEMORY; PRAGMA main.journal_mode = OFF; \
                 PRAGMA main.synchronous = OFF; PRAGMA foreign_keys = OFF;",
            )
            .map_err(internal)?;
        let mut limit = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        snap.conn
            .file_control(Some(rusqlite::MAIN_DB), FileControl::SizeLimit(&mut limit))
            .map_err(internal)?;
        snap.conn.busy_timeout(busy).map_err(internal)?;
        Ok(snap)
    }

    /// Address of the in-memory database's buffer (tests: it never moves).
    #[cfg(test)]
    fn buffer_address(&mut self) -> Option<usize> {
        self.memdb_buffer().map(|b| b.as_ptr() as usize)
    }

    /// After the copy: indexes (built once, on the copied rows), row
    /// counts, the manifest, and the size.
    pub(super) fn finish(
        &mut self,
        req: &SnapshotRequest<'_>,
        c: Copied,
    ) -> Result<(), SnapshotError> {
        let too_large = too_large(req);
        let internal = SnapshotError::Internal;
        for sql in &c.index_sql {
            self.conn.execute_batch(sql).map_err(&too_large)?;
        }
        let mut row_counts = Vec::new();
        for t in &c.graph.tables {
            let n: i64 = self
                .conn
                .query_row(
                    &format!("SELECT count(*) FROM main.{}", ident(&t.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            row_counts.push((t.name.clone(), n as u64));
        }
        row_counts.sort();
        write_manifest(&self.conn, req, &c.fingerprint, &row_counts).map_err(&too_large)?;
        let size: i64 = self
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .map_err(internal)?;
        self.size = size as u64;
        self.row_counts = row_counts;
        self.source_schema_sha256 = c.fingerprint;
        self.tenant = c.tenant;
        Ok(())
    }
}

/// The case's tenant from its root row. A missing column is no tenant,
/// unless the caller is limited to tenants: then the configuration does not
/// fit the source. Only the stored spelling of the key matches (see
/// `ScopeGraph::root_match`).
fn case_tenant(
    conn: &Connection,
    graph: &ScopeGraph,
    req: &SnapshotRequest<'_>,
) -> Result<Option<String>, SnapshotError> {
    let Some(column) = req.tenant_column else {
        return Ok(None);
    };
    // SQLite reads an unknown double-quoted name as a string, which would
    // compare every case against the column's name: look it up first.
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM src.pragma_table_info(?1) WHERE name = ?2",
            [graph.root().name.as_str(), column],
            |r| r.get(0),
        )
        .map_err(|e| SnapshotError::from_source(e, req.busy_timeout))?;
    if !exists {
        return match req.allowed_tenants {
            Some(_) => Err(SnapshotError::Schema(format!(
                "tenant column {column:?} does not exist in the root table"
            ))),
            None => Ok(None),
        };
    }
    let sql = format!(
        "SELECT {} FROM src.{} AS s WHERE {}",
        ident(column),
        ident(&graph.root().name),
        ScopeGraph::root_match(&req.scope.root_key),
    );
    match conn.query_row(&sql, [req.case_id], |r| r.get::<_, Option<String>>(0)) {
        Ok(t) => Ok(t),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        // A non-text tenant only matters to callers limited to tenants.
        Err(e) if req.allowed_tenants.is_some() => {
            Err(SnapshotError::Schema(format!("tenant column: {e}")))
        }
        Err(_) => Ok(None),
    }
}

fn write_manifest(
    conn: &Connection,
    req: &SnapshotRequest<'_>,
    fingerprint: &str,
    row_counts: &[(String, u64)],
) -> rusqlite::Result<()> {
    let counts: serde_json::Map<String, serde_json::Value> = row_counts
        .iter()
        .map(|(t, n)| (t.clone(), (*n).into()))
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {MANIFEST_TABLE} (
            format_version INTEGER NOT NULL,
            export_id TEXT NOT NULL,
            case_id TEXT NOT NULL,
            root_table TEXT NOT NULL,
            created_at TEXT NOT NULL,
            source_schema_sha256 TEXT NOT NULL,
            tool_version TEXT NOT NULL,
            row_counts TEXT NOT NULL
        )"
    ))?;
    conn.execute(
        &format!("INSERT INTO {MANIFEST_TABLE} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        rusqlite::params![
            FORMAT_VERSION,
            req.export_id.to_hex(),
            req.case_id,
            req.scope.root_table,
            req.created_at,
            fingerprint,
            env!("CARGO_PKG_VERSION"),
            serde_json::Value::Object(counts).to_string(),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_never_moves_while_it_grows() {
        let mut snap = Snapshot::in_memory(256 << 20, Duration::from_secs(1)).unwrap();
        snap.conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let first = snap.buffer_address().expect("a buffer");
        for _ in 0..200 {
            snap.conn
                .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
                .unwrap();
        }
        let size = snap.memdb_buffer().map_or(0, |b| b.len());
        assert!(size > 16 << 20, "grew to {size} bytes");
        assert_eq!(snap.buffer_address(), Some(first));
    }

    #[test]
    fn the_ceiling_still_holds_with_the_whole_buffer_reserved() {
        let snap = Snapshot::in_memory(1 << 20, Duration::from_secs(1)).unwrap();
        snap.conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let e = (0..20)
            .find_map(|_| {
                snap.conn
                    .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
                    .err()
            })
            .expect("the 1 MiB ceiling is hit");
        assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull));
    }
}
